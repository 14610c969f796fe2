package image

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
)

const bmapBlock = 4096

// writeBmap describes the image's data blocks in bmaptool's format 2.0,
// so `bmaptool copy` writes only them, checking each range's SHA-256.
func writeBmap(raw string) (bmap []byte, mapped int64, err error) {
	f, err := os.Open(raw)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	size := fi.Size()
	var ranges [][2]int64 // block ranges, inclusive
	err = dataRanges(f, func(start, end int64) error {
		first, last := start/bmapBlock, (min(end, size)+bmapBlock-1)/bmapBlock-1
		if n := len(ranges); n > 0 && ranges[n-1][1] >= first-1 {
			ranges[n-1][1] = max(ranges[n-1][1], last)
			return nil
		}
		ranges = append(ranges, [2]int64{first, last})
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	var body strings.Builder
	buf := make([]byte, 1<<20)
	for _, r := range ranges {
		h := sha256.New()
		start, end := r[0]*bmapBlock, min((r[1]+1)*bmapBlock, size)
		if _, err := io.CopyBuffer(h, io.NewSectionReader(f, start, end-start), buf); err != nil {
			return nil, 0, err
		}
		mapped += r[1] - r[0] + 1
		span := fmt.Sprint(r[0])
		if r[1] != r[0] {
			span = fmt.Sprintf("%d-%d", r[0], r[1])
		}
		fmt.Fprintf(&body, "        <Range chksum=\"%s\"> %s </Range>\n", hex.EncodeToString(h.Sum(nil)), span)
	}
	blocks := (size + bmapBlock - 1) / bmapBlock
	doc := func(sum string) string {
		return fmt.Sprintf(`<?xml version="1.0" ?>
<!-- written by otter image; bmaptool copy IMAGE.zst DEVICE -->
<bmap version="2.0">
    <ImageSize> %d </ImageSize>
    <BlockSize> %d </BlockSize>
    <BlocksCount> %d </BlocksCount>
    <MappedBlocksCount> %d </MappedBlocksCount>
    <ChecksumType> sha256 </ChecksumType>
    <BmapFileChecksum> %s </BmapFileChecksum>
    <BlockMap>
%s    </BlockMap>
</bmap>
`, size, bmapBlock, blocks, mapped, sum, body.String())
	}
	// The file's own checksum is taken with the field all zeros.
	sum := sha256.Sum256([]byte(doc(strings.Repeat("0", 64))))
	return []byte(doc(hex.EncodeToString(sum[:]))), mapped * bmapBlock, nil
}
