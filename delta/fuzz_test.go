package delta

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParseHeader: a header that parses marshals to the same bytes.
func FuzzParseHeader(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join("..", "testdata", "delta", "*.patch"))
	if len(seeds) == 0 {
		f.Fatal("no seed patches in testdata/delta")
	}
	for _, s := range seeds {
		data, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h, off, err := ParseHeader(bytes.NewReader(data))
		if err != nil {
			return
		}
		again, err := MarshalHeader(h)
		if err != nil || !bytes.Equal(again, data[:off]) {
			t.Fatalf("parse then marshal changed the header (%v)", err)
		}
	})
}

// FuzzParseOps: an op list that parses marshals to the same bytes.
func FuzzParseOps(f *testing.F) {
	f.Add(marshalOps([]pathOp{{Target: "00000000000000000000000000000000-a", Base: "11111111111111111111111111111111-a", Entries: []entryOp{
		{Rel: "bin", Op: opDir}, {Rel: "bin/x", Op: opFile, Exec: true, Size: 3, Codec: codecBsdiff, Source: "11111111111111111111111111111111-a/bin/x", NCtrl: 1, Pred: predAArch64},
		{Rel: "lib", Op: opSymlink, Target: "/nix/store/x"}, {Rel: "old", Op: opRemove},
		{Rel: "z", Op: opFile, Size: 9, Codec: codecZdict, Source: "11111111111111111111111111111111-a/z", Frame: 7},
		{Rel: "lit", Op: opFile, Size: 2, Codec: codecLiteral}, {Rel: "c", Op: opFile, Size: 2, Codec: codecCopy, Source: "11111111111111111111111111111111-a"},
	}}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		ops, err := parseOps(data, 1<<20)
		if err != nil {
			return
		}
		if again := marshalOps(ops); !bytes.Equal(again, data) {
			t.Fatalf("parse then marshal changed the op list")
		}
	})
}
