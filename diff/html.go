package diff

import (
	"fmt"
	"html/template"
	"io"
	"sort"
	"strings"
)

// WriteHTML writes the report as one self-contained page: no network,
// nothing fetched. Bars show where the bytes go (each path's share of the
// patch, and the three ways to update); the cascade is drawn as a graph,
// causes on the left, the paths they renamed to the right.
func WriteHTML(w io.Writer, r *Result, from, to string) error {
	type bar struct {
		Label string
		Bytes int64
		Width float64
		Class string
	}
	var ways []bar
	maxWay := max(r.Totals.Patch, r.Totals.Layers, r.Totals.NarBytes, 1)
	for _, b := range []bar{{"otter's patch", r.Totals.Patch, 0, "patch"}, {"the missing layers", r.Totals.Layers, 0, "layers"}, {"Nix substitution (NAR)", r.Totals.NarBytes, 0, "nix"}} {
		b.Width = barScale * float64(b.Bytes) / float64(maxWay)
		ways = append(ways, b)
	}
	var paths []bar
	var maxPath int64 = 1
	for _, p := range r.Paths {
		if p.PatchBytes > maxPath {
			maxPath = p.PatchBytes
		}
	}
	for _, p := range r.Paths {
		if p.Status == Unchanged || p.Status == Removed {
			continue
		}
		paths = append(paths, bar{Label: p.Name + " (" + p.Status + ")", Bytes: p.PatchBytes, Width: barScale * float64(p.PatchBytes) / float64(maxPath), Class: p.Status})
	}
	sort.SliceStable(paths, func(i, j int) bool { return paths[i].Bytes > paths[j].Bytes })

	// The cascade: a node per cause and per renamed or changed path, an
	// edge from each cause (through its via chain) to the path.
	type node struct {
		ID, Label, Class string
		X, Y             int
	}
	type edge struct{ X1, Y1, X2, Y2 int }
	col := map[string]int{}
	label := map[string]string{}
	class := map[string]string{}
	var pairs [][2]string
	for _, p := range r.Paths {
		if p.Status != Renamed && p.Status != Changed {
			continue
		}
		label[p.Name], class[p.Name] = p.Name, p.Status
		for _, c := range p.Causes {
			if c.Name == p.Name {
				continue
			}
			chain := append([]string{c.Name}, reverse(c.Via)...)
			chain = append(chain, p.Name)
			for i := 0; i+1 < len(chain); i++ {
				pairs = append(pairs, [2]string{chain[i], chain[i+1]})
				if col[chain[i+1]] < col[chain[i]]+1 {
					col[chain[i+1]] = col[chain[i]] + 1
				}
			}
			if _, ok := label[c.Name]; !ok {
				label[c.Name], class[c.Name] = c.Name, Changed
			}
		}
	}
	var names []string
	for n := range label {
		names = append(names, n)
	}
	sort.Strings(names)
	rows := map[int]int{}
	pos := map[string][2]int{}
	var nodes []node
	for _, n := range names {
		c := col[n]
		x, y := 20+c*220, 30+rows[c]*40
		rows[c]++
		pos[n] = [2]int{x, y}
		nodes = append(nodes, node{ID: "node-" + n, Label: label[n], Class: class[n], X: x, Y: y})
	}
	seen := map[[2]string]bool{}
	var edges []edge
	for _, pr := range pairs {
		if seen[pr] {
			continue
		}
		seen[pr] = true
		a, b := pos[pr[0]], pos[pr[1]]
		edges = append(edges, edge{a[0] + 160, a[1], b[0], b[1]})
	}
	height := 60
	for _, n := range rows {
		height = max(height, 30+n*40)
	}
	width := 40
	for c := range rows {
		width = max(width, 20+c*220+180)
	}
	return page.Execute(w, map[string]any{
		"From": from, "To": to, "Totals": r.Totals, "Ways": ways, "Paths": paths, "All": r.Paths,
		"Nodes": nodes, "Edges": edges, "Width": width, "Height": height,
		"Human": human,
	})
}

// barScale is the longest bar's share of its track (percent): the rest
// is room for the figure beside it.
const barScale = 85

func reverse(s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[len(s)-1-i] = v
	}
	return out
}

func human(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

var page = template.Must(template.New("diff").Funcs(template.FuncMap{
	"human": human,
	"causes": func(cs []Cause) string {
		var s []string
		for _, c := range cs {
			s = append(s, c.String())
		}
		return strings.Join(s, "; ")
	},
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>otter diff: {{.From}} → {{.To}}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:20px} h2{font-size:16px;margin-top:2em}
.bar{display:flex;align-items:center;margin:4px 0}
.bar .l{flex:0 0 260px} .bar .t{flex:1;display:flex;align-items:center;min-width:0}
.bar .b{height:16px;background:#4a7;margin-right:8px;flex:none} .bar .v{white-space:nowrap}
.bar .b.layers,.bar .b.renamed{background:#79c} .bar .b.nix,.bar .b.changed{background:#c75} .bar .b.added{background:#a6c}
table{border-collapse:collapse} td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}
td.n{text-align:right} svg text{font-size:12px}
</style></head><body>
<h1>What the update {{.From}} → {{.To}} costs, and why</h1>
<p id="summary">{{index .Totals.Paths "changed"}} changed, {{index .Totals.Paths "renamed"}} renamed only, {{index .Totals.Paths "added"}} added, {{index .Totals.Paths "removed"}} removed, {{index .Totals.Paths "unchanged"}} unchanged.</p>
<h2>What a device downloads</h2>
<div id="ways">{{range .Ways}}<div class="bar"><span class="l">{{.Label}}</span><span class="t"><span class="b {{.Class}}" style="width:{{printf "%.1f" .Width}}%"></span><span class="v">{{human .Bytes}}</span></span></div>{{end}}</div>
<h2>Where the patch's bytes go</h2>
<div id="paths">{{range .Paths}}<div class="bar"><span class="l">{{.Label}}</span><span class="t"><span class="b {{.Class}}" style="width:{{printf "%.1f" .Width}}%"></span><span class="v">{{human .Bytes}}</span></span></div>{{end}}</div>
<h2>The cascade</h2>
<svg id="cascade" xmlns="http://www.w3.org/2000/svg" width="{{.Width}}" height="{{.Height}}">
{{range .Edges}}<line x1="{{.X1}}" y1="{{.Y1}}" x2="{{.X2}}" y2="{{.Y2}}" stroke="#888"/>{{end}}
{{range .Nodes}}<g class="node {{.Class}}" id="{{.ID}}"><rect x="{{.X}}" y="{{.Y}}" width="160" height="24" rx="4" transform="translate(0,-12)" fill="{{if eq .Class "changed"}}#f4d8cc{{else}}#d6e6f4{{end}}" stroke="#555"/><text x="{{.X}}" y="{{.Y}}" dx="8" dy="4">{{.Label}}</text></g>{{end}}
</svg>
<h2>Every path</h2>
<table id="table"><tr><th>status</th><th>path</th><th>NAR</th><th>layer</th><th>patch</th><th>why</th></tr>
{{range .All}}{{if ne .Status "unchanged"}}<tr class="{{.Status}}"><td>{{.Status}}</td><td>{{.Name}} {{if and .FromVersion .Version (ne .FromVersion .Version)}}{{.FromVersion}} → {{.Version}}{{else if .Version}}{{.Version}}{{else}}{{.FromVersion}}{{end}}</td><td class="n">{{human .NarSize}}</td><td class="n">{{human .LayerSize}}</td><td class="n">{{human .PatchBytes}}</td><td>{{causes .Causes}}</td></tr>{{end}}{{end}}
</table>
</body></html>
`))
