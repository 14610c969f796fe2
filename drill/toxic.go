package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// faults are what a bad link does besides its bandwidth (which tc tbf
// limits): added latency, and connections cut after a number of bytes.
type faults struct {
	Latency time.Duration
	// CutEvery cuts each connection after this many bytes towards the
	// device (toxiproxy's limit_data); 0 never cuts.
	CutEvery int64
}

// proxies is a toxiproxy server (the library, in this process): one
// proxy per device and upstream, listening on the device's link.
type proxies struct{ srv *toxiproxy.ApiServer }

func newProxies() *proxies {
	return &proxies{srv: toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())}
}

// add starts a proxy from listen to upstream with the faults.
func (p *proxies) add(name, listen, upstream string, f faults) (*toxiproxy.Proxy, error) {
	px := toxiproxy.NewProxy(p.srv, name, listen, upstream)
	if err := p.srv.Collection.Add(px, true); err != nil {
		return nil, fmt.Errorf("toxiproxy %s: %w", name, err)
	}
	var toxics []string
	if f.Latency > 0 {
		// Half each way: a round trip of f.Latency.
		half := f.Latency.Milliseconds() / 2
		toxics = append(toxics,
			fmt.Sprintf(`{"name":"latency-down","type":"latency","stream":"downstream","attributes":{"latency":%d}}`, half),
			fmt.Sprintf(`{"name":"latency-up","type":"latency","stream":"upstream","attributes":{"latency":%d}}`, half))
	}
	if f.CutEvery > 0 {
		toxics = append(toxics, fmt.Sprintf(`{"name":"cut","type":"limit_data","stream":"downstream","attributes":{"bytes":%d}}`, f.CutEvery))
	}
	for _, t := range toxics {
		if _, err := px.Toxics.AddToxicJson(strings.NewReader(t)); err != nil {
			return nil, fmt.Errorf("toxiproxy %s: %w", name, err)
		}
	}
	return px, nil
}

func (p *proxies) close() { p.srv.Collection.Clear() }
