// Package yamlfile reads otter's YAML files (otter.yaml, device.yaml)
// strictly: unknown fields are errors, and every error names the file,
// the line and the field.
package yamlfile

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// File is a parsed file: its path and the line of each field.
type File struct {
	Path  string
	lines map[string]int
}

// Decode parses data (the file at path) into v; fields v does not have
// are errors. The error names path and line.
func Decode(path string, data []byte, v any) (*File, error) {
	f := &File{Path: path, lines: map[string]int{}}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, f.located(message(err))
	}
	if len(root.Content) == 0 {
		return nil, fmt.Errorf("%s: empty", path)
	}
	record(root.Content[0], "", f.lines)
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		return nil, f.located(message(err))
	}
	return f, nil
}

var lineRE = regexp.MustCompile(`^line (\d+): (.*)$`)

// located turns "line 9: msg" into "path:9: field: msg", naming the field
// whose key is on that line.
func (f *File) located(msg string) error {
	m := lineRE.FindStringSubmatch(msg)
	if m == nil {
		return fmt.Errorf("%s: %s", f.Path, msg)
	}
	line, _ := strconv.Atoi(m[1])
	field := ""
	for k, l := range f.lines {
		if l == line && (field == "" || len(k) > len(field) || len(k) == len(field) && k < field) {
			field = k
		}
	}
	if field == "" || strings.Contains(m[2], "unknown field") {
		return fmt.Errorf("%s:%d: %s", f.Path, line, m[2])
	}
	return fmt.Errorf("%s:%d: %s: %s", f.Path, line, field, m[2])
}

// LineError is an error at a line of the file, from a field's own
// UnmarshalYAML (yaml does not add the line to those).
func LineError(n *yaml.Node, format string, a ...any) error {
	return fmt.Errorf("line %d: %s", n.Line, fmt.Sprintf(format, a...))
}

// message turns "yaml: line 3: field x not found in type …" into
// "line 3: unknown field x".
func message(err error) string {
	var te *yaml.TypeError
	msg := err.Error()
	if errors.As(err, &te) && len(te.Errors) > 0 {
		msg = te.Errors[0]
	}
	msg = strings.TrimPrefix(msg, "yaml: ")
	msg = strings.TrimPrefix(msg, "unmarshal errors:\n  ")
	if i := strings.Index(msg, " not found in type"); i >= 0 && strings.Contains(msg, "field ") {
		msg = strings.Replace(msg[:i], "field ", "unknown field ", 1)
	}
	return msg
}

// record maps dotted field paths (targets[0].store.dir) to lines.
func record(n *yaml.Node, prefix string, out map[string]int) {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			if prefix != "" {
				key = prefix + "." + key
			}
			out[key] = n.Content[i].Line
			record(n.Content[i+1], key, out)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			key := fmt.Sprintf("%s[%d]", prefix, i)
			out[key] = c.Line
			record(c, key, out)
		}
	}
}

// Err names the file, the line of field (or of its nearest parent) and
// the field: "otter.yaml:12: targets[0].store.dir: …".
func (f *File) Err(field, format string, a ...any) error {
	line := 0
	for k := field; k != ""; {
		if l, ok := f.lines[k]; ok {
			line = l
			break
		}
		i := strings.LastIndexAny(k, ".[")
		if i < 0 {
			break
		}
		k = k[:i]
	}
	where := f.Path
	if line > 0 {
		where = fmt.Sprintf("%s:%d", f.Path, line)
	}
	return fmt.Errorf("%s: %s: %s", where, field, fmt.Sprintf(format, a...))
}

// Has reports whether the file sets field.
func (f *File) Has(field string) bool {
	_, ok := f.lines[field]
	return ok
}
