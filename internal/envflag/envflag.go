// Package envflag binds command-line flags to CINDERPORT_* environment
// variables: a flag given on the command line wins, then the variable, then
// the default. Help output names the variable of every flag.
package envflag

import (
	"flag"
	"fmt"
	"io"
	"strings"
	"time"
)

// Set is a flag.FlagSet whose flags also read environment variables.
type Set struct {
	*flag.FlagSet
	prefix string
	env    map[string]string
	envOf  map[string]string // flag name → variable name
}

// New returns a Set for a command. prefix is the variable prefix
// ("CINDERPORT_"); env is the process environment as KEY=VALUE pairs.
func New(name, prefix string, env []string, out io.Writer) *Set {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	s := &Set{FlagSet: fs, prefix: prefix, env: map[string]string{}, envOf: map[string]string{}}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			s.env[k] = v
		}
	}
	return s
}

// Var names the environment variable of flag name: CINDERPORT_S3_ENDPOINT
// for s3-endpoint.
func (s *Set) Var(name string) string {
	return s.prefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// Getenv returns a variable of the environment the Set was built with.
func (s *Set) Getenv(key string) string { return s.env[key] }

func (s *Set) note(name, usage string) string {
	v := s.Var(name)
	s.envOf[name] = v
	return usage + " [$" + v + "]"
}

// String defines a string flag.
func (s *Set) String(p *string, name, def, usage string) {
	s.StringVar(p, name, def, s.note(name, usage))
}

// Int defines an int flag.
func (s *Set) Int(p *int, name string, def int, usage string) {
	s.IntVar(p, name, def, s.note(name, usage))
}

// Int64 defines an int64 flag.
func (s *Set) Int64(p *int64, name string, def int64, usage string) {
	s.Int64Var(p, name, def, s.note(name, usage))
}

// Bool defines a bool flag.
func (s *Set) Bool(p *bool, name string, def bool, usage string) {
	s.BoolVar(p, name, def, s.note(name, usage))
}

// Duration defines a duration flag.
func (s *Set) Duration(p *time.Duration, name string, def time.Duration, usage string) {
	s.DurationVar(p, name, def, s.note(name, usage))
}

// Parse parses args; then every flag not given on the command line takes
// its environment variable's value when that is set. A malformed variable
// is an error naming it.
func (s *Set) Parse(args []string) error {
	if err := s.FlagSet.Parse(args); err != nil {
		return err
	}
	given := map[string]bool{}
	s.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	s.VisitAll(func(f *flag.Flag) {
		v, ok := s.env[s.envOf[f.Name]]
		if err != nil || given[f.Name] || !ok || s.envOf[f.Name] == "" {
			return
		}
		if e := f.Value.Set(v); e != nil {
			err = fmt.Errorf("invalid $%s: %v", s.envOf[f.Name], e)
		}
	})
	return err
}
