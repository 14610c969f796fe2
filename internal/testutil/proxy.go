package testutil

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BadLink is a TCP proxy on loopback in front of a server: it delays
// every chunk it forwards and cuts each connection after CutEvery bytes
// from the server, like a 3G link that drops.
type BadLink struct {
	Addr     string // host:port to dial instead of the server
	CutEvery int64  // bytes from the server after which a connection is cut; 0: never
	Latency  time.Duration
	Down     atomic.Bool  // refuse and cut everything, like a registry that vanished
	Received atomic.Int64 // bytes the server sent through the proxy
	Sent     atomic.Int64 // bytes the client sent through the proxy
	Cuts     atomic.Int64
}

// NewBadLink starts a proxy to target (host:port); it stops with the test.
func NewBadLink(t testing.TB, target string, cutEvery int64, latency time.Duration) *BadLink {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &BadLink{Addr: l.Addr().String(), CutEvery: cutEvery, Latency: latency}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close() // idle keep-alive connections would hold the proxy open
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			if b.Down.Load() {
				c.Close()
				continue
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				b.serve(c, target)
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}()
	return b
}

func (b *BadLink) serve(c net.Conn, target string) {
	defer c.Close()
	s, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer s.Close()
	go func() {
		n, _ := io.Copy(s, c)
		b.Sent.Add(n)
		s.Close()
	}()
	buf := make([]byte, 16<<10)
	var sent int64
	for {
		n, err := s.Read(buf)
		if n > 0 {
			if b.Latency > 0 {
				time.Sleep(b.Latency)
			}
			if b.Down.Load() {
				return
			}
			if b.CutEvery > 0 && sent+int64(n) > b.CutEvery {
				n = int(b.CutEvery - sent)
				c.Write(buf[:n])
				b.Received.Add(int64(n))
				b.Cuts.Add(1)
				return
			}
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
			sent += int64(n)
			b.Received.Add(int64(n))
		}
		if err != nil {
			return
		}
	}
}
