// Package chunker stores file bytes: it splits file byte ranges into
// fixed-size chunks (Files) and keeps chunks as checksummed files on local
// disk (LocalStore). Replication, placement and repair will build on the
// Blobs interface that LocalStore implements.
//
// It imports chunker/chunk (IDs, references, sentinel errors) and the
// namespace contract etcdmeta/meta; never nfsfront or the etcdmeta root.
//
// # Files
//
// File bytes [i*chunkSize, (i+1)*chunkSize) live in chunk i; the file's
// chunk map in the namespace records, for each i that has data, a chunk.Ref
// with the chunk's random ID, its length and checksum. Chunks are
// immutable: a write stores new chunks (merging the old bytes of partly
// covered chunks), commits all their references and the new size in one
// namespace transaction, and then deletes the chunks it replaced. A missing
// reference is a hole; bytes past a chunk's length, up to the file size,
// read as zeros. Truncating into a chunk rewrites that chunk shortened, so
// old bytes never reappear when the file grows again.
//
// # Local store layout
//
// A LocalStore directory holds 256 subdirectories named by the first two
// hex digits of a chunk ID, each holding chunk files named by the full
// lowercase hex ID:
//
//	<dir>/3f/3fa9...c2   chunk 3fa9...c2
//	<dir>/3f/.tmp-...    a Put in progress (removed at open after a crash)
//
// A Put writes a temporary file in the chunk's subdirectory, fsyncs it,
// renames it into place and fsyncs the subdirectory. All access goes
// through an os.Root confined to the directory.
//
// # Chunk file format (version 1)
//
// A 60-byte header, then the data. Integers are little endian.
//
//	offset size field
//	     0    4 magic "WHC1"
//	     4    1 format version, 1
//	     5    3 reserved, zero
//	     8    4 data length n in bytes (uint32)
//	    12   16 chunk ID (must match the file name)
//	    28   32 BLAKE3-256 of the data
//	    60    n data
//
// Every read checks the magic, version, reserved bytes, that the file is
// exactly 60+n bytes, the ID and the checksum; any mismatch is reported as
// chunk.ErrCorrupt and no byte of the chunk is returned.
package chunker
