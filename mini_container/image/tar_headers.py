"""Reading tar headers: what one entry of a layer looks like in the stream, decoded by tarfile's rules.

A tar archive is a sequence of 512-byte blocks. Each entry is a header block, then its data padded to
a multiple of 512 bytes; two blocks of zeros end the archive. The header block (POSIX ustar):

    offset  bytes  field      written as
    0       100    name       text, NUL-terminated unless it fills the field
    100     8      mode       octal digits, then NUL or space (GNU tar: base-256 if byte 0 is 0x80/0xff)
    108     8+8    uid, gid   octal
    124     12     size       octal: the bytes of data that follow
    136     12     mtime      octal, whole seconds
    148     8      chksum     octal: the sum of the block's 512 bytes, these 8 counted as spaces
    156     1      typeflag   '0' file, '1' hard link, '2' symlink, '5' directory, 'x' PAX header, ...
    157     100    linkname   a link's target
    257     8      magic      "ustar\\0" "00" (POSIX) or "ustar  \\0" (GNU)
    265     32+32  uname, gname
    329     8+8    devmajor, devminor
    345     155    prefix     a long name is prefix + "/" + name

What ustar cannot say (a name over 255 bytes, a sub-second mtime, a size of 8 GiB or more, xattrs)
goes in a PAX extended header (POSIX.1-2001): an entry of type 'x' whose data is records
`LENGTH KEYWORD=VALUE\\n` (LENGTH counts the whole record, in decimal) that apply to the entry after it.
Go's archive/tar, so docker and buildkit, writes one before every entry whose mtime has a fraction of a
second: each entry of a Debian base layer has two headers, `27 mtime=1795818511.758802\\n` and ustar.
`python3 -c "import tarfile; [print(m.name, m.pax_headers) for m in tarfile.open('layer.tar')]"`
shows them; `od -c layer.tar | head -40` shows the blocks.

`tarfile` stays the parser: `TarFile.next()` walks the blocks and builds each entry with the
`tarinfo=` class it is given, `LayerTarInfo`. What that class changes is how the two common headers
are decoded, which was half of an unpack's time: tarfile cuts the ustar block field by field (`nti`,
`nts`) and sums its checksum twice over tuples of 512 ints, and parses PAX records with regular
expressions. Here one `struct` format cuts the block, one `sum()` over the bytes checks it, and the
records are split with `bytes.partition`. A block the fast path does not take (a base-256 number, a
checksum that only a signed sum matches, an old GNU sparse header, the end-of-archive zeros, a short
read) goes to tarfile's own `frombuf`, which decides as it always did.

Traps:
- tarfile reads a PAX or GNU long-name header's data into memory whole, so a header claiming 4 GiB
  would take 4 GiB of memory: the size is capped (MAX_HEADER) before anything is read.
- TarFile.next() takes a corrupt header (a bad checksum, a number that is none) for the end of the
  archive unless it is the first, so the entries after it would be left out without a word (and the
  DiffID, a hash of the bytes, would still match). Here a corrupt header refuses the layer.
- A record's LENGTH must frame it exactly (it ends with '\\n'). Python 3.11.7's tarfile matches records
  with a regular expression and stops at the first that does not fit; later releases (the fix for
  CVE-2024-6232, a regular expression that took quadratic time) raise InvalidHeaderError, which next()
  takes for the end of the archive again. Here a malformed record refuses the layer.
- PAX text is UTF-8. A name that is not (GNU tar's `hdrcharset=BINARY`, or old tars that wrote raw
  bytes) is kept as surrogate escapes, so os.fsencode gives the kernel the original bytes back.
"""

from __future__ import annotations

import struct
import tarfile

__all__ = ["MAX_HEADER", "LayerTarInfo", "pax_records"]

MAX_HEADER = 1 << 20  # bytes of one PAX or GNU long-name header
_EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
             tarfile.GNUTYPE_LONGLINK)
# The ustar block: name, mode, uid, gid, size, mtime, chksum, typeflag, linkname, (magic and version
# skipped), uname, gname, devmajor, devminor, prefix, (12 bytes of padding skipped).
_USTAR = struct.Struct("100s 8s 8s 8s 12s 12s 8s c 100s 8x 32s 32s 8s 8s 155s 12x")
_CHKSUM = slice(148, 156)
_LENGTH_DIGITS = 20  # at most, in a PAX record's LENGTH (as tarfile 3.12+ reads it)


def _octal(field: bytes) -> int:
    """A ustar number as tarfile's nti() reads an octal one; ValueError for base-256 or no number."""
    return int(field.partition(b"\0")[0].strip() or b"0", 8)


def _text(field: bytes, encoding: str, errors: str) -> str:
    """A ustar text field as tarfile's nts() reads it: up to the first NUL."""
    return field.partition(b"\0")[0].decode(encoding, errors)


def pax_records(data: bytes) -> list[tuple[bytes, bytes]]:
    """The (KEYWORD, VALUE) pairs of a PAX header's data, in order; ReadError if one is malformed.

    Each record is `LENGTH KEYWORD=VALUE\\n`; the data is padded with NULs to the end of its block."""
    records, pos = [], 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + _LENGTH_DIGITS + 1)
        digits = data[pos:space] if space > pos else b""
        end = pos + int(digits) if digits.isdigit() else pos  # one past the record's '\n'
        keyword, equals, value = data[space + 1:end - 1].partition(b"=")
        # '5 k=\n' is the shortest record; a bad one is refused, not skipped (see Traps)
        if end - pos < 5 or end > len(data) or data[end - 1] != 0x0A or not keyword or not equals:
            raise tarfile.ReadError(f"a malformed PAX record at byte {pos} of its header")
        records.append((keyword, value))
        pos = end
    return records


class LayerTarInfo(tarfile.TarInfo):
    """tarfile's TarInfo with the ustar block and the per-entry PAX header decoded in fewer steps, and
    a cap on the size of the headers tarfile reads into memory."""

    @classmethod
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
        """The entry a ustar block describes (tarfile.TarInfo.frombuf, the common case done here)."""
        try:
            (name, mode, uid, gid, size, mtime, chksum, kind, linkname, uname, gname, devmajor, devminor,
             prefix) = _USTAR.unpack(buf)
            numbers = [_octal(field) for field in (mode, uid, gid, size, mtime, chksum, devmajor, devminor)]
        except (struct.error, ValueError):  # not 512 bytes, a base-256 number, or no number at all
            return cls._tarfile_frombuf(buf, encoding, errors)
        if numbers[5] != 256 + sum(buf) - sum(buf[_CHKSUM]) or kind == tarfile.GNUTYPE_SPARSE:
            return cls._tarfile_frombuf(buf, encoding, errors)  # zeros, a signed or bad checksum; old sparse
        obj = cls()
        obj.mode, obj.uid, obj.gid, obj.size, obj.mtime, obj.chksum, obj.devmajor, obj.devminor = numbers
        obj.name = _text(name, encoding, errors)
        obj.type = tarfile.DIRTYPE if kind == tarfile.AREGTYPE and obj.name.endswith("/") else kind  # V7 dir
        obj.linkname = _text(linkname, encoding, errors)
        obj.uname = _text(uname, encoding, errors)
        obj.gname = _text(gname, encoding, errors)
        if obj.type == tarfile.DIRTYPE:
            obj.name = obj.name.rstrip("/")
        prefix = _text(prefix, encoding, errors)
        if prefix and obj.type not in tarfile.GNU_TYPES:
            obj.name = f"{prefix}/{obj.name}"
        return obj

    @classmethod
    def _tarfile_frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
        """tarfile's own frombuf, but a corrupt block is an error: TarFile.next() takes one that is not
        the first for the end of the archive, and the rest of the layer would be left out unnoticed."""
        try:
            return super().frombuf(buf, encoding, errors)
        except tarfile.InvalidHeaderError as error:
            raise tarfile.ReadError(f"a corrupt header: {error}") from None

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED and self.size > MAX_HEADER:
            raise tarfile.ReadError(f"a {self.size}-byte extended header (more than {MAX_HEADER})")
        return super()._proc_member(tar)

    def _proc_pax(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        """A PAX header of type 'x': its records, then the entry they apply to (tarfile's _proc_pax,
        with the records split here; global 'g' headers and Solaris 'X' ones are left to tarfile)."""
        if self.type != tarfile.XHDTYPE or tar.encoding != "utf-8":
            return super()._proc_pax(tar)
        records = pax_records(tar.fileobj.read(self._block(self.size)))
        pax_headers = tar.pax_headers.copy()  # the global headers, then this entry's own
        for keyword, value in records:
            pax_headers[keyword.decode("utf-8", tar.errors)] = value.decode("utf-8", tar.errors)
        try:
            entry = self.fromtarfile(tar)
        except tarfile.HeaderError as error:
            raise tarfile.SubsequentHeaderError(str(error)) from None
        if "GNU.sparse.map" in pax_headers:  # GNU tar's sparse files, format 0.1
            self._proc_gnusparse_01(entry, pax_headers)
        elif "GNU.sparse.size" in pax_headers:  # format 0.0: the offset and numbytes records, in pairs
            entry.sparse = _sparse_00(records)
        elif pax_headers.get("GNU.sparse.major") == "1" and pax_headers.get("GNU.sparse.minor") == "0":
            self._proc_gnusparse_10(entry, pax_headers, tar)
        entry._apply_pax_info(pax_headers, tar.encoding, tar.errors)
        entry.offset = self.offset
        if "size" in pax_headers:  # the data's size, so where the next header starts, came from here
            tar.offset = entry.offset_data
            if entry.isreg() or entry.type not in tarfile.SUPPORTED_TYPES:
                tar.offset += entry._block(entry.size)
        return entry


def _sparse_00(records: list[tuple[bytes, bytes]]) -> list[tuple[int, int]]:
    """The map of a GNU sparse file, format 0.0: repeated GNU.sparse.offset and .numbytes records."""
    try:
        offsets = [int(value) for keyword, value in records if keyword == b"GNU.sparse.offset"]
        sizes = [int(value) for keyword, value in records if keyword == b"GNU.sparse.numbytes"]
    except ValueError:
        raise tarfile.ReadError("a GNU sparse map (format 0.0) with a number that is none") from None
    return list(zip(offsets, sizes, strict=False))
