// composecheck validates Compose files exactly as `docker compose config` does, for machines without the
// Compose plugin: it loads them with compose-go (the loader of Docker Compose v2: schema validation,
// interpolation, merging of several -f files, !reset/!override) and prints the resolved model as YAML.
//
//	go run ./compose/tools/composecheck [-e ENV_FILE]... -f FILE [-f FILE]...
//
// Interpolation uses the process environment, then the files given with -e, or else .env in the project
// directory (the folder of the first -f file), as docker compose does with --env-file.
// Exit status: 0 valid, 1 invalid, 2 usage or internal error.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
)

type repeated []string

func (r *repeated) String() string     { return fmt.Sprint(*r) }
func (r *repeated) Set(v string) error { *r = append(*r, v); return nil }

func main() {
	var files, envFiles repeated
	flag.Var(&files, "f", "Compose file (repeatable, merged in order)")
	flag.Var(&envFiles, "e", "environment file for interpolation (repeatable)")
	flag.Parse()
	if len(files) == 0 || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: composecheck [-e ENV_FILE]... -f FILE [-f FILE]...")
		os.Exit(2)
	}
	options, err := cli.NewProjectOptions(files, cli.WithOsEnv, cli.WithEnvFiles(envFiles...), cli.WithDotEnv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "composecheck:", err)
		os.Exit(2)
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, "invalid:", err)
		os.Exit(1)
	}
	out, err := project.MarshalYAML()
	if err != nil {
		fmt.Fprintln(os.Stderr, "composecheck:", err)
		os.Exit(2)
	}
	_, _ = os.Stdout.Write(out)
}
