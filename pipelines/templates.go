package pipelines

import (
	"embed"
	"fmt"
)

//go:embed templates/*.yml
var templates embed.FS

// Template returns a ready CI file: "github" (GitHub Actions) or
// "gitlab" (GitLab CI).
func Template(ci string) ([]byte, error) {
	file := map[string]string{"github": "templates/github-actions.yml", "gitlab": "templates/gitlab-ci.yml"}[ci]
	if file == "" {
		return nil, fmt.Errorf("%w: no template for %q (github, gitlab)", ErrReleaseFile, ci)
	}
	return templates.ReadFile(file)
}
