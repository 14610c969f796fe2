package pipelines

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/otter-fleet/otter/internal/testutil"
)

// TestGitHubTemplate: actionlint (built from the Go module proxy by the
// setup) finds nothing wrong with the GitHub Actions workflow.
func TestGitHubTemplate(t *testing.T) {
	actionlint := testutil.Tool(t, "actionlint")
	data, err := Template("github")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), ".github", "workflows")
	os.MkdirAll(dir, 0o755)
	f := filepath.Join(dir, "release.yml")
	os.WriteFile(f, data, 0o644)
	cmd := exec.Command(actionlint, "-no-color", "-shellcheck=", "-pyflakes=", f)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("actionlint: %v\n%s", err, out)
	}
	// And it does fail on a broken workflow: the check is real.
	os.WriteFile(f, []byte(strings.Replace(string(data), "runs-on:", "runs_on:", 1)), 0o644)
	if out, err := exec.Command(actionlint, "-no-color", "-shellcheck=", "-pyflakes=", f).CombinedOutput(); err == nil {
		t.Fatalf("actionlint accepted a job without runs-on:\n%s", out)
	}
}

// TestGitLabTemplate: the GitLab file is YAML whose release job installs
// otter and runs otter release with the key from CI/CD variables.
func TestGitLabTemplate(t *testing.T) {
	data, err := Template("gitlab")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]struct {
		Stage        string   `yaml:"stage"`
		Image        string   `yaml:"image"`
		BeforeScript []string `yaml:"before_script"`
		Script       []string `yaml:"script"`
		Artifacts    struct {
			Paths []string `yaml:"paths"`
		} `yaml:"artifacts"`
	}
	var top map[string]any
	if err := yaml.Unmarshal(data, &top); err != nil {
		t.Fatal(err)
	}
	delete(top, "stages")
	b, _ := yaml.Marshal(top)
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	job, ok := doc["otter-release"]
	if !ok || job.Stage != "release" || !strings.HasPrefix(job.Image, "golang:") {
		t.Fatalf("job %+v", job)
	}
	all := strings.Join(append(job.BeforeScript, job.Script...), "\n")
	for _, want := range []string{"go install github.com/otter-fleet/otter/cmd/otter", "otter binfmt install", "otter release -f otter.yaml --report otter-report --json"} {
		if !strings.Contains(all, want) {
			t.Errorf("the job lacks %q", want)
		}
	}
	if !strings.Contains(strings.Join(job.Artifacts.Paths, " "), "otter-report/") {
		t.Errorf("the job keeps no update report: %v", job.Artifacts.Paths)
	}
	if _, err := Template("jenkins"); err == nil {
		t.Error("a template for jenkins")
	}
}
