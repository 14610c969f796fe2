package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/urfave/cli/v2"

	"github.com/otter-fleet/otter/bundle"
)

// version is set at link time with -ldflags "-X main.version=…".
var version = "dev"

// versionResult is the --json output of otter version.
type versionResult struct {
	Version      string `json:"version"`
	Commit       string `json:"commit,omitempty"`
	Go           string `json:"go"`
	Platform     string `json:"platform"`
	ArtifactType string `json:"bundleArtifactType"`
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print otter's version",
		Action: func(c *cli.Context) error {
			res := versionResult{Version: version, Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH, ArtifactType: bundle.ArtifactType}
			if bi, ok := debug.ReadBuildInfo(); ok {
				for _, s := range bi.Settings {
					if s.Key == "vcs.revision" {
						res.Commit = s.Value
					}
				}
			}
			return newUI(c).result(res, func(w io.Writer) {
				fmt.Fprintf(w, "otter %s (%s, %s)\n", res.Version, res.Go, res.Platform)
			})
		},
	}
}

// manCommand prints otter's man page (roff), for packages.
func manCommand() *cli.Command {
	return &cli.Command{
		Name:   "man",
		Usage:  "print otter's man page (section 1)",
		Hidden: true,
		Action: func(c *cli.Context) error {
			page, err := c.App.ToManWithSection(1)
			if err != nil {
				return err
			}
			_, err = io.WriteString(c.App.Writer, page)
			return err
		},
	}
}
