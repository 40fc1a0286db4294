#!/usr/bin/python3
"""LVM stand-in for the cinder lab: logical volumes are sparse files.

The machines the tests run on have no device-mapper, so real LVM cannot
activate a logical volume. Cinder's LVM driver only needs the LVM command
line to report and change its volume group, and a path under /dev/<vg>/ that
tgtd can export: this script answers the commands the driver (os-brick's
local_dev.lvm) runs, with a volume group being a directory of sparse files.

Installed as bin/lvmshim in the lab directory and linked under every LVM
command name; the volume groups live in ../vg next to it. While the file
../hold-lvremove exists, lvremove waits: tests use it to keep a volume in
status "deleting".
"""
import os
import re
import sys
import time
import uuid

LAB = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
VG_ROOT = os.path.join(LAB, "vg")
HOLD_REMOVE = os.path.join(LAB, "hold-lvremove")
VG_SIZE_GIB = 1000.0
VERSION = "  LVM version:     2.03.16(2) (2022-05-18)"

# Options that take a value, so that the value is not taken for a name.
VALUED = {"-o", "--options", "--separator", "--unit", "--units", "-L", "--size",
          "-n", "--name", "--config", "-V", "--virtualsize", "-m", "--mirrors",
          "--mirrorlog", "-R", "--regionsize", "-a", "--activate", "-l", "--extents"}


def parse(args):
    """Splits args into {option: value} and positional names."""
    opts, names = {}, []
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("-"):
            key, eq, val = a.partition("=")
            if eq:
                opts[key] = val
            elif key in VALUED and i + 1 < len(args):
                opts[key] = args[i + 1]
                i += 1
            else:
                opts[key] = ""
        else:
            names.append(a)
        i += 1
    return opts, names


def opt(opts, *keys, default=None):
    for k in keys:
        if k in opts:
            return opts[k]
    return default


def volume_groups():
    if not os.path.isdir(VG_ROOT):
        return []
    return sorted(d for d in os.listdir(VG_ROOT) if os.path.isdir(os.path.join(VG_ROOT, d)))


def logical_volumes(vg):
    return sorted(f for f in os.listdir(os.path.join(VG_ROOT, vg)) if not f.startswith("."))


def size_gib(vg, lv):
    return os.path.getsize(os.path.join(VG_ROOT, vg, lv)) / 2**30


def parse_size(s):
    m = re.fullmatch(r"([0-9.]+)([bBsSkKmMgGtT]?)", s)
    if not m:
        raise ValueError("bad size %r" % s)
    unit = {"": 2**20, "b": 1, "s": 512, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    return int(float(m.group(1)) * unit[m.group(2).lower()])


def split_lv(path):
    """vg/lv, /dev/vg/lv or vg -> (vg, lv or "")."""
    if path.startswith("/dev/"):
        path = path[len("/dev/"):]
    vg, _, lv = path.partition("/")
    return vg, lv


def dev_link(vg, lv):
    d = os.path.join("/dev", vg)
    os.makedirs(d, exist_ok=True)
    link = os.path.join(d, lv)
    if not os.path.lexists(link):
        os.symlink(os.path.join(VG_ROOT, vg, lv), link)


def remove_dev_link(vg, lv):
    link = os.path.join("/dev", vg, lv)
    if os.path.lexists(link):
        os.remove(link)


def table(rows, fields, sep):
    for row in rows:
        print("  " + sep.join(str(row.get(f, "")) for f in fields))


def cmd_vgs(opts, names):
    fields = opt(opts, "-o", "--options", default="vg_name").split(",")
    sep = opt(opts, "--separator", default=" ")
    rows = []
    for vg in volume_groups():
        if names and vg not in names:
            continue
        used = sum(size_gib(vg, lv) for lv in logical_volumes(vg))
        info = {"size": "%.2f" % VG_SIZE_GIB, "free": "%.2f" % (VG_SIZE_GIB - used),
                "lv_count": len(logical_volumes(vg)), "uuid": uuid.uuid5(uuid.NAMESPACE_URL, vg)}
        info["name"] = info["vg_name"] = vg
        info["vg_size"], info["vg_free"] = info["size"], info["free"]
        rows.append(info)
    if names and not rows:
        sys.stderr.write('  Volume group "%s" not found\n' % names[0])
        return 5
    table(rows, fields, sep)
    return 0


def cmd_pvs(opts, names):
    fields = opt(opts, "-o", "--options", default="pv_name").split(",")
    sep = opt(opts, "--separator", default=" ")
    rows = []
    for vg in volume_groups():
        used = sum(size_gib(vg, lv) for lv in logical_volumes(vg))
        rows.append({"vg_name": vg, "name": "/dev/lab-pv-" + vg, "pv_name": "/dev/lab-pv-" + vg,
                     "size": "%.2f" % VG_SIZE_GIB, "free": "%.2f" % (VG_SIZE_GIB - used)})
    table(rows, fields, sep)
    return 0


def cmd_lvs(opts, names):
    fields = opt(opts, "-o", "--options", default="vg_name,name,size").split(",")
    sep = opt(opts, "--separator", default=" ")
    wanted = [split_lv(n) for n in names]
    rows = []
    for vg in volume_groups():
        for lv in logical_volumes(vg):
            if wanted and not any(w[0] == vg and w[1] in ("", lv) for w in wanted):
                continue
            rows.append({"vg_name": vg, "name": lv, "lv_name": lv, "size": "%.2f" % size_gib(vg, lv),
                         "lv_size": "%.2f" % size_gib(vg, lv), "Attr": "-wi-a-----",
                         "lv_attr": "-wi-a-----", "data_percent": "", "origin": "", "pool_lv": ""})
    if wanted and not rows:
        sys.stderr.write('  Failed to find logical volume "%s"\n' % names[0])
        return 5
    table(rows, fields, sep)
    return 0


def cmd_lvcreate(opts, names):
    if any(k in opts for k in ("-T", "--thin", "-s", "--snapshot", "-V", "--virtualsize")):
        sys.stderr.write("lvmshim: snapshots and thin volumes are not provided\n")
        return 3
    name = opt(opts, "-n", "--name")
    size = opt(opts, "-L", "--size")
    if not name or not size or len(names) != 1:
        sys.stderr.write("lvmshim: lvcreate needs -n NAME -L SIZE VG\n")
        return 3
    vg = split_lv(names[0])[0]
    path = os.path.join(VG_ROOT, vg, name)
    if os.path.exists(path):
        sys.stderr.write('  Logical Volume "%s" already exists in volume group "%s"\n' % (name, vg))
        return 5
    with open(path, "wb") as f:
        f.truncate(parse_size(size))
    dev_link(vg, name)
    print('  Logical volume "%s" created.' % name)
    return 0


def cmd_lvremove(opts, names):
    deadline = time.monotonic() + 300
    while os.path.exists(HOLD_REMOVE) and time.monotonic() < deadline:
        time.sleep(0.1)
    for n in names:
        vg, lv = split_lv(n)
        if not lv:
            continue
        path = os.path.join(VG_ROOT, vg, lv)
        if os.path.exists(path):
            os.remove(path)
        remove_dev_link(vg, lv)
    return 0


def cmd_lvextend(opts, names):
    size = opt(opts, "-L", "--size")
    if not size or len(names) != 1:
        sys.stderr.write("lvmshim: lvextend needs -L SIZE VG/LV\n")
        return 3
    vg, lv = split_lv(names[0])
    path = os.path.join(VG_ROOT, vg, lv)
    new = parse_size(size)
    if new < os.path.getsize(path):
        sys.stderr.write("lvmshim: cannot shrink with lvextend\n")
        return 5
    with open(path, "r+b") as f:
        f.truncate(new)
    return 0


def cmd_lvrename(opts, names):
    if len(names) == 2:
        (vg, old), (_, new) = split_lv(names[0]), split_lv(names[1])
    else:
        vg, old, new = names[0], names[1], names[2]
    os.rename(os.path.join(VG_ROOT, vg, old), os.path.join(VG_ROOT, vg, new))
    remove_dev_link(vg, old)
    dev_link(vg, new)
    return 0


def cmd_vgcreate(opts, names):
    os.makedirs(os.path.join(VG_ROOT, names[0]), exist_ok=True)
    return 0


def cmd_noop(opts, names):
    return 0


COMMANDS = {"vgs": cmd_vgs, "pvs": cmd_pvs, "lvs": cmd_lvs, "lvdisplay": cmd_lvs,
            "lvcreate": cmd_lvcreate, "lvremove": cmd_lvremove, "lvextend": cmd_lvextend,
            "lvrename": cmd_lvrename, "vgcreate": cmd_vgcreate, "lvchange": cmd_noop,
            "vgchange": cmd_noop, "udevadm": cmd_noop}


def main(argv):
    cmd, args = os.path.basename(argv[0]), argv[1:]
    if cmd == "lvm" and args:
        cmd, args = args[0], args[1:]
    if cmd == "version" or "--version" in args:
        print(VERSION)
        return 0
    handler = COMMANDS.get(cmd)
    if handler is None:
        sys.stderr.write("lvmshim: %s is not provided\n" % cmd)
        return 3
    opts, names = parse(args)
    return handler(opts, names)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
