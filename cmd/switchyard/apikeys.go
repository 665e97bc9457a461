package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// apiKeyEnv names the environment variable with serve's API keys
// (comma-separated), used when no --api-key or --api-key-file is given.
const apiKeyEnv = "SWITCHYARD_API_KEY"

// apiKeyFlags are serve's API key options (serve.Config.APIKeys).
type apiKeyFlags struct {
	keys []string // --api-key, each given as is
	file string   // --api-key-file
}

func (a *apiKeyFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringArrayVar(&a.keys, "api-key", nil, `require "Authorization: Bearer KEY" on /v1/*; repeat it to accept several keys (default: the comma-separated keys of $`+apiKeyEnv+` when neither --api-key nor --api-key-file is given; none: the API is open)`)
	f.StringVar(&a.file, "api-key-file", "", "accept the keys in this file too: one per line; blank lines and lines starting with # are ignored; a missing file or one without keys is an error")
}

// resolve returns the keys to accept: every --api-key and every key of
// --api-key-file, or, when neither is given, those of env (the value of
// $SWITCHYARD_API_KEY, comma-separated; empty: none, the API is open).
// Keys are trimmed of surrounding white space; an empty --api-key, an
// empty item of env, or a key file that cannot be read or holds no key is
// an error, so that a mistake never leaves the API open. Errors never
// print a key.
func (a *apiKeyFlags) resolve(env string) ([]string, error) {
	var keys []string
	for i, k := range a.keys {
		k = strings.TrimSpace(k)
		if k == "" {
			return nil, fmt.Errorf("--api-key number %d is empty", i+1)
		}
		keys = append(keys, k)
	}
	if a.file != "" {
		fk, err := readAPIKeyFile(a.file)
		if err != nil {
			return nil, err
		}
		keys = append(keys, fk...)
	}
	if len(a.keys) > 0 || a.file != "" || strings.TrimSpace(env) == "" {
		return keys, nil
	}
	for i, k := range strings.Split(env, ",") {
		k = strings.TrimSpace(k)
		if k == "" {
			return nil, fmt.Errorf("$%s: key number %d of the comma-separated list is empty", apiKeyEnv, i+1)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// readAPIKeyFile reads an --api-key-file: one key per line, white space
// around it trimmed; blank lines and lines whose first non-blank character
// is # are skipped. A file that holds no key is an error.
func readAPIKeyFile(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--api-key-file: %w", err)
	}
	var keys []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		keys = append(keys, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("--api-key-file %s: %w", path, err)
	}
	if len(keys) == 0 {
		return nil, errors.New("--api-key-file " + path + " holds no key (one per line; # starts a comment line)")
	}
	return keys, nil
}
