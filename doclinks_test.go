package otter_test

import (
	"go/ast"
	"go/doc"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// docPackage parses the non-test Go files of dir.
func docPackage(t *testing.T, dir string) (*doc.Package, []*ast.File) {
	t.Helper()
	fset := token.NewFileSet()
	names, _ := filepath.Glob(filepath.Join(dir, "*.go"))
	var files []*ast.File
	for _, n := range names {
		if strings.HasSuffix(n, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, n, nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	if len(files) == 0 {
		return nil, nil
	}
	p, err := doc.NewFromFiles(fset, files, "github.com/otter-fleet/otter/"+dir, doc.PreserveAST)
	if err != nil {
		t.Fatal(err)
	}
	return p, files
}

// TestDocLinks: every doc link in a comment ([Name], [Type.Method],
// [pkg.Name]) names a symbol that exists, in this package or in the otter
// package it names; links into other modules are not checked.
func TestDocLinks(t *testing.T) {
	link := regexp.MustCompile(`(?:^|[^\w\]])\[([A-Za-z_]\w*(?:\.[A-Za-z_]\w*){0,2})\]([^:(]|$)`)
	pkgs := map[string]*doc.Package{}
	var dirs []string
	filepath.WalkDir(".", func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		if p != "." && strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "tools" {
			return filepath.SkipDir
		}
		dirs = append(dirs, p)
		return nil
	})
	for _, dir := range dirs {
		if p, _ := docPackage(t, dir); p != nil {
			pkgs[p.Name] = p
		}
	}
	checked := 0
	for _, dir := range dirs {
		p, files := docPackage(t, dir)
		if p == nil {
			continue
		}
		parser := p.Parser()
		for _, f := range files {
			for _, cg := range f.Comments {
				for _, m := range link.FindAllStringSubmatch(cg.Text(), -1) {
					parts := strings.Split(m[1], ".")
					ok := false
					switch len(parts) {
					case 1:
						ok = parser.LookupSym("", parts[0])
					case 2:
						if parser.LookupSym(parts[0], parts[1]) {
							ok = true
						} else if other, isOtter := pkgs[parts[0]]; isOtter {
							ok = other.Parser().LookupSym("", parts[1])
						} else if _, known := parser.LookupPackage(parts[0]); known {
							continue // another module's package: not ours to check
						}
					case 3:
						if other, isOtter := pkgs[parts[0]]; isOtter {
							ok = other.Parser().LookupSym(parts[1], parts[2])
						} else {
							continue
						}
					}
					checked++
					if !ok {
						t.Errorf("%s: [%s] names nothing", dir, m[1])
					}
				}
			}
		}
	}
	if checked < 3 {
		t.Fatalf("only %d doc links checked: is the pattern right?", checked)
	}
}
