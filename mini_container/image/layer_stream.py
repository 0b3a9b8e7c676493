"""Reading a layer blob: its compression, found by magic bytes, and its DiffID.

An image layer travels as a blob: a tar archive, usually compressed. The manifest names the blob by
the sha256 of its *compressed* bytes (the digest the registry serves), while the image config lists
`rootfs.diff_ids`: the sha256 of each layer's *uncompressed* tar. The DiffID is what ties the config to
the filesystem, so it is computed here, while the tar streams past, from exactly the bytes that the
unpacker reads: one pass, and never a whole layer in memory.

Which decompressor to use is decided by the first bytes of the blob, not by the media type
(`application/vnd.oci.image.layer.v1.tar+gzip` says what the blob should be, its bytes say what it is):

    1f 8b          gzip   (RFC 1952; also what docker's media type `...rootfs.diff.tar.gzip` holds)
    28 b5 2f fd    zstd   (RFC 8878; `...layer.v1.tar+zstd`)
    "ustar" at 257 a plain tar (POSIX ustar, pax and GNU tar all carry it), or a first block of
                   zeros: an empty tar, like docker's 1024-byte "empty layer"

gzip goes through python-isal when it is installed (Intel's ISA-L inflater, about twice as fast as
zlib), and through the standard library's `gzip` otherwise; zstd through `zstandard`.

The blob is read, inflated and hashed by a thread of its own, a few 1 MiB blocks ahead of the tar
parser (`_ReadAhead`). Inflating and sha256 release the GIL on large buffers, so on a second core they
overlap the unpacker's parsing and system calls, as `tar -xz` overlaps its gzip child. (That thread is
also the one that reads the blob: a reader that reports progress reports it from there.)

Traps:
- A zstd frame cut short is not an error for `zstandard`'s stream reader: it just ends. gzip raises
  EOFError. Either way the DiffID, checked after the last byte, catches a truncated or altered layer.
- Bytes after the tar's end-of-archive blocks (a tar is padded to a 10 KiB record) belong to the DiffID
  too: `finish()` reads the stream to its end before it names the digest.
- A decompression bomb costs time, not memory: every reader here hands out bounded chunks.
- The read-ahead thread runs until the stream is closed: `close()` it (a `with` block), or a layer
  refused halfway leaves a thread waiting on its full queue for as long as the process lives.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import queue
import threading
import zlib
from typing import BinaryIO

import zstandard

from mini_container.errors import ContainerError

from .oci import short_digest

# What a decompressor raises on a stream that is cut short (EOFError) or damaged.
_STREAM_ERRORS: tuple[type[Exception], ...] = (EOFError, OSError, zlib.error, zstandard.ZstdError)
try:
    from isal import igzip as _igzip
    from isal.isal_zlib import error as _IsalError

    _STREAM_ERRORS += (_IsalError,)
except ImportError:  # python-isal is optional: the standard library's zlib inflates the same streams
    _igzip = None

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_FOREIGN_MAGICS = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x04\x22\x4d\x18": "lz4"}
_SNIFF = 512  # one tar block: enough for every magic, ustar's included (bytes 257..262)
_BLOCK = 1 << 20  # uncompressed bytes the read-ahead thread hands over at a time
_AHEAD = 4  # blocks it may hold ready: a few MiB of a layer in memory, never more


class LayerError(ContainerError):
    """A layer that cannot be unpacked: malformed, truncated, hostile, or not the one the config names.

    The message is one line naming the image, the layer (its digest, shortened) and the entry, if any:
        image evil:1 layer sha256:ab12cd34ef56…: entry '../x' has a '..' component, which may lead
        outside the layer root: refused (the layer is malformed or hostile)
    """

    def __init__(self, image: str, layer: str, problem: str, entry: str | None = None):
        what = f"entry {entry!r} {problem}" if entry is not None else problem
        super().__init__(f"image {image} layer {short_digest(layer)}: {what}")
        self.image, self.layer, self.entry = image, layer, entry


REFUSED = ": refused (the layer is malformed or hostile)"


class _Rejoined(io.RawIOBase):
    """The sniffed head of a stream followed by the rest of it, so the decompressor sees every byte."""

    def __init__(self, head: bytes, rest: BinaryIO):
        self._head, self._rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            count = min(len(buffer), len(self._head))
            buffer[:count], self._head = self._head[:count], self._head[count:]
            return count
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _read_head(stream: BinaryIO) -> bytes:
    head = b""
    while len(head) < _SNIFF:
        chunk = stream.read(_SNIFF - len(head))
        if not chunk:
            break
        head += chunk
    return head


def sniff_compression(head: bytes) -> str | None:
    """'gzip', 'zstd' or 'tar' for the first bytes of a blob; None when they are none of these."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head[257:262] == b"ustar" or (len(head) == _SNIFF and not any(head)):
        return "tar"
    return None


class _ReadAhead:
    """A thread that reads `source` block by block, hashing each block, up to _AHEAD blocks ahead."""

    def __init__(self, source: BinaryIO, digest):
        self._source, self._digest = source, digest
        self._blocks: queue.Queue[bytes | BaseException] = queue.Queue(_AHEAD)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._read, name="layer-read-ahead", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while block := self._source.read(_BLOCK):
                self._digest.update(block)
                if not self._put(block):
                    return
            self._put(b"")  # the end
        except BaseException as error:  # the consumer raises it, in its own thread
            self._put(error)

    def _put(self, item: bytes | BaseException) -> bool:
        while not self._stopping.is_set():
            with contextlib.suppress(queue.Full):
                self._blocks.put(item, timeout=0.1)
                return True
        return False

    def next_block(self) -> bytes:
        """The next block (b"" at the end); what the thread raised is raised here."""
        item = self._blocks.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._blocks.get_nowait()  # unblock a put in progress
        self._thread.join()
        self._source.close()


class LayerTarStream(io.RawIOBase):
    """The uncompressed tar of a layer blob, hashed as it is read (sha256: the DiffID)."""

    def __init__(self, blob: BinaryIO, *, image: str, layer: str):
        self.image, self.layer = image, layer
        self._ahead: _ReadAhead | None = None  # started once the compression is known; close() stops it
        head = _read_head(blob)
        self.compression = sniff_compression(head)
        if self.compression is None:
            raise LayerError(image, layer, _describe_unknown(head) + REFUSED)
        raw = _Rejoined(head, blob)
        if self.compression == "gzip":
            source: BinaryIO = (_igzip or gzip).GzipFile(fileobj=raw, mode="rb")
        elif self.compression == "zstd":
            source = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        else:
            source = raw
        self._sha256 = hashlib.sha256()
        self._pending = memoryview(b"")  # what is left of the block being read
        self._failure: LayerError | None = None
        self._ended = False
        self.size = 0  # uncompressed bytes read so far
        self._ahead = _ReadAhead(source, self._sha256)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._failure is not None:
            raise self._failure
        if not self._pending and not self._ended:
            if self._ahead is None:
                raise ValueError("read from a closed layer stream")
            try:
                self._pending = memoryview(self._ahead.next_block())
            except _STREAM_ERRORS as error:
                what = "truncated" if isinstance(error, EOFError) else "corrupt"
                self._failure = LayerError(self.image, self.layer,
                                           f"{self.compression} stream is {what} ({error})" + REFUSED)
                raise self._failure from None
            self._ended = not self._pending
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        self.size += count
        return count

    def seekable(self) -> bool:
        return True  # forward only (see seek): enough for tarfile's "r:" mode when members are read in order

    def tell(self) -> int:
        return self.size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Skip forward to `offset`, reading (and hashing) the bytes before it; never backward."""
        if whence == io.SEEK_CUR:
            offset += self.size
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("a layer stream has no known end to seek from")
        if offset < self.size:
            raise io.UnsupportedOperation(f"a layer stream cannot go back (byte {self.size} to {offset})")
        while self.size < offset and self.read(min(offset - self.size, _BLOCK)):
            pass
        return self.size

    def close(self) -> None:
        """Stop the read-ahead thread and the decompressor. The blob itself is the caller's to close."""
        if self._ahead is not None:
            self._ahead.stop()
            self._ahead = None
        super().close()

    def finish(self) -> str:
        """Read whatever follows the tar's end-of-archive blocks, and return the DiffID ('sha256:...')."""
        while self.read(_BLOCK):
            pass
        return "sha256:" + self._sha256.hexdigest()


def _describe_unknown(head: bytes) -> str:
    if not head:
        return "blob is empty (not even an empty tar)"
    for magic, name in _FOREIGN_MAGICS.items():
        if head.startswith(magic):
            return f"blob is compressed with {name}; OCI layers are gzip, zstd or plain tar"
    return f"blob is neither a tar archive nor gzip nor zstd (it starts with {head[:8].hex(' ')})"
