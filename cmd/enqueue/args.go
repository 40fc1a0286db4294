package main

import "github.com/cinderport/cinderport/internal/envflag"

// flagsWithArgs lets positional arguments and flags mix in any order
// ("download VOLUME_ID -o FILE").
type flagsWithArgs struct {
	*envflag.Set
	args []string
}

func (f *flagsWithArgs) Parse(args []string) error {
	var pos []string
	for {
		if err := f.Set.Parse(args); err != nil {
			return err
		}
		rest := f.Set.Args()
		if len(rest) == 0 {
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	f.args = pos
	return nil
}

func (f *flagsWithArgs) NArg() int        { return len(f.args) }
func (f *flagsWithArgs) Arg(i int) string { return f.args[i] }
