"""Opening h5 files: the one place where saltx turns a path (or file object) into a handle.

All file opening goes through :func:`open_h5`, so that remote sources (``s3://`` URLs)
can be added in one spot. :class:`LazyH5` keeps one handle per process and reopens it
after a ``fork`` (DataLoader workers), with HDF5 file locking disabled so that many
readers may share a file on network filesystems.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import warnings
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

import h5py
import numpy as np

from saltx.errors import DataError

H5Source = str | os.PathLike | Any
"""A local path, a URL (``scheme://...``), an ``fsspec.core.OpenFile`` or a binary file object."""


def describe_source(source: H5Source) -> str:
    """Human-readable name of an h5 source, for error messages."""
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    for attr in ("full_name", "path", "name"):
        value = getattr(source, attr, None)
        if isinstance(value, str):
            return value
    return repr(source)


def _open_file_object(source: Any) -> Any:
    """Return a readable binary file object for a URL, an fsspec OpenFile or a file object."""
    if isinstance(source, str):  # a URL
        try:
            from saltx.io.fs import open_remote
        except ImportError:  # pragma: no cover - remote support not installed
            import fsspec

            return fsspec.open(source, "rb").open()
        return open_remote(source)
    if hasattr(source, "open") and not hasattr(source, "read"):
        return source.open()  # fsspec.core.OpenFile: opened lazily, once per process
    if hasattr(source, "read") and hasattr(source, "seek"):
        return source
    raise DataError(
        f"cannot open h5 source {source!r}: expected a local path, a URL, an "
        "fsspec OpenFile or a binary file object with read() and seek()"
    )


def open_h5(source: H5Source) -> h5py.File:
    """Open an h5 file read-only.

    Parameters
    ----------
    source
        A local path (``str`` or ``PathLike``; ``file://`` URLs too), another URL that
        fsspec can open (e.g. ``s3://bucket/key.h5``), an ``fsspec.core.OpenFile`` or
        an open binary file object.

    Returns
    -------
    h5py.File
        The open file (HDF5 file locking off).

    Raises
    ------
    DataError
        If the file does not exist or is not a readable HDF5 file (e.g. truncated).
    """
    name = describe_source(source)
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        if path.startswith("file://"):
            path = path[len("file://") :]
        if "://" not in path:
            if not Path(path).is_file():
                raise DataError(f"h5 file not found: '{path}'")
            try:
                return h5py.File(path, "r", locking=False)
            except OSError as err:
                raise DataError(
                    f"cannot read h5 file '{path}': not a valid HDF5 file or truncated/corrupt "
                    f"({err})"
                ) from err
        source = path
    try:
        fobj = _open_file_object(source)
    except FileNotFoundError as err:
        raise DataError(f"h5 file not found: '{name}'") from err
    try:
        f = h5py.File(fobj, "r")
    except OSError as err:
        if fobj is not source:
            fobj.close()
        raise DataError(
            f"cannot read h5 file '{name}': not a valid HDF5 file or truncated/corrupt ({err})"
        ) from err
    if fobj is not source:
        f.saltx_owned_fileobj = fobj  # closed with the file by LazyH5.close
    return f


# -- cheap integrity checks (metadata and a few rows; never a pass over the data) ----------
SAMPLE_ROWS = 8
"""Rows of the global object :func:`check_storage` reads to find never-written (all-zero) jets."""


def _link_target(target: str, source: H5Source) -> str | None:
    """A file named by an external link or a virtual dataset, as HDF5 would find it, or None."""
    if target == ".":
        return describe_source(source)
    name = describe_source(source)
    if "://" in name and not name.startswith("file://"):
        return None  # relative to a URL: HDF5 cannot follow it
    folder = os.path.dirname(os.path.abspath(name.removeprefix("file://")))
    for candidate in (target, os.path.join(folder, target)):
        if os.path.isfile(candidate):
            return candidate
    return None


def check_links(f: h5py.File, name: str, source: H5Source) -> None:
    """Refuse a dataset that silently reads data from elsewhere.

    * an external link (``f[name]`` stored in another file) whose target file or dataset is
      missing is a :class:`DataError`; one that resolves gets a warning naming the target;
    * a virtual dataset with a missing source file or source dataset is a
      :class:`DataError` (HDF5 would read its fill value, zeros, without a word).
    """
    where = f"dataset '{name}' of '{describe_source(source)}'"
    link = f.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        target = _link_target(link.filename, source)
        if target is None:
            raise DataError(
                f"{where} is an external link to '{link.filename}:{link.path}', which does not "
                "exist; copy the data into the file (saltx reads only datasets it can find)"
            )
        warnings.warn(
            f"{where} is an external link: its data come from '{target}:{link.path}'",
            stacklevel=3,
        )
    try:
        ds = f[name]
    except KeyError as err:
        raise DataError(f"{where} cannot be opened: {err}") from err
    if not isinstance(ds, h5py.Dataset) or not ds.is_virtual:
        return
    for source_map in ds.virtual_sources():
        target = _link_target(source_map.file_name, source)
        missing = target is None
        if not missing:
            try:
                with h5py.File(target, "r", locking=False) as src:
                    missing = source_map.dset_name not in src
            except OSError:
                missing = True
        if missing:
            raise DataError(
                f"{where} is a virtual dataset whose source '{source_map.file_name}:"
                f"{source_map.dset_name}' is missing or unreadable: HDF5 would read zeros "
                "there; restore the source file or rebuild the virtual file"
            )


def check_storage(ds: h5py.Dataset, source: H5Source, global_object: bool) -> None:
    """Refuse a dataset that was allocated but not completely written.

    Chunked datasets (UPP's files): every chunk must exist (a chunk that was never written
    reads as zeros); from the chunk index, no data read. The global object (``jets``) also
    has :data:`SAMPLE_ROWS` rows read (first, last, evenly spaced): a row whose bytes are all
    zero is a jet that was never written (a real jet has a pt; zeros would be labelled as
    the first class). Cost: the chunk index plus at most 8 chunk decodes per file.

    Raises
    ------
    DataError
        Naming the file, the dataset and the first missing chunk or zero row.
    """
    where = f"dataset '{ds.name.lstrip('/')}' of '{describe_source(source)}'"
    rows = ds.shape[0] if ds.ndim else 0
    if rows == 0:
        return
    if ds.chunks is not None and not ds.is_virtual:
        expected = int(np.prod([-(-n // c) for n, c in zip(ds.shape, ds.chunks, strict=True)]))
        try:
            written = ds.id.get_num_chunks()
        except (AttributeError, RuntimeError, OSError):  # old HDF5: no chunk index query
            written = expected
        if written < expected:
            raise DataError(
                f"{where} has {written} of its {expected} chunks written: the file was not "
                "completely written (the missing rows would read as zeros); rewrite it"
            )
    if not global_object:
        return
    picks = sorted({int(i) for i in np.linspace(0, rows - 1, min(rows, SAMPLE_ROWS))})
    for i in picks:
        row = ds[i : i + 1]
        if not np.frombuffer(row.tobytes(), np.uint8).any():
            raise DataError(
                f"{where}: row {i} is all zeros, a jet that was never written (the file was "
                "allocated but not completely filled); rewrite the file"
            )


def _same_layout(ds: h5py.Dataset) -> bool:
    """True if the file's compound type has exactly the byte layout of ``ds.dtype``."""
    ftype, dtype = ds.id.get_type(), ds.dtype
    if not isinstance(ftype, h5py.h5t.TypeCompoundID) or ftype.get_size() != dtype.itemsize:
        return False
    if ftype.get_nmembers() != len(dtype.names):
        return False
    for i in range(ftype.get_nmembers()):
        name = ftype.get_member_name(i).decode()
        if name not in dtype.fields or dtype.fields[name][1] != ftype.get_member_offset(i):
            return False
        member = dtype.fields[name][0]
        if member.subdtype is not None or not (member.isnative or member.itemsize == 1):
            return False
        if ftype.get_member_type(i).dtype != member:
            return False
    return True


LZF_FILTER = 32000
"""HDF5 filter id of LZF (h5py's bundled compressor; UPP's default)."""
LZF_MAX_TOKEN = 264
"""The most bytes one LZF token (a literal run or a back-reference) writes."""


def _lzf_decoder() -> Callable[[bytes, np.ndarray], int] | None:
    """liblzf's ``lzf_decompress`` as built into h5py (the code HDF5 runs for LZF chunks).

    Called through ctypes, which releases the GIL, so chunks decode in parallel threads.
    The decoder returns the bytes written; when ``out`` is shorter than the chunk it
    stops early (liblzf reports E2BIG) and every byte of ``out`` but the last
    ``LZF_MAX_TOKEN`` is then decoded (no token writes more than that), so it returns
    ``out.nbytes - LZF_MAX_TOKEN``. None where this h5py build does not export the
    function (readers then let HDF5 decode).
    """
    try:
        import h5py.h5z

        fn = ctypes.CDLL(h5py.h5z.__file__, use_errno=True).lzf_decompress
    except (OSError, AttributeError):  # pragma: no cover - depends on the h5py build
        return None
    fn.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_void_p, ctypes.c_uint]
    fn.restype = ctypes.c_uint

    def decode(data: bytes, out: np.ndarray) -> int:
        n = fn(data, len(data), out.ctypes.data, out.nbytes)
        if n == 0 and ctypes.get_errno() == errno.E2BIG:
            return max(0, out.nbytes - LZF_MAX_TOKEN)
        return n

    return decode


def _zlib_decoder(data: bytes, out: np.ndarray) -> int:
    raw = zlib.decompress(data)  # releases the GIL while inflating
    n = min(len(raw), out.nbytes)
    out.reshape(-1).view(np.uint8)[:n] = np.frombuffer(raw, np.uint8, n)
    return len(raw)


class RowReader:
    """Read rows ``[start, start + len(buf))`` of a structured dataset into ``buf``.

    When the file's compound type has numpy's byte layout (files written through h5py,
    as UPP does), rows are read with the *file* type as memory type, so HDF5 copies bytes
    instead of converting every field (3-25x faster; checked once on the first row).
    Otherwise it falls back to ``read_direct``.

    Chunked datasets whose chunks span whole rows and carry no filter, LZF or gzip (UPP
    and Salt files) are read chunk by chunk instead (:meth:`read_rows`): the stored bytes
    come from ``read_direct_chunk`` and are decoded side by side into one reused buffer,
    whose rows ``[start, stop)`` are returned as a view: no copy after decoding (HDF5
    decodes each chunk into a buffer of its own and copies the selected rows out).
    Decoding is most of the cost of a batch; with ``threads > 1`` a thread pool decodes
    the chunks of one read in parallel (the decoders release the GIL). Checked once
    against HDF5 on the first chunk; a missing chunk is read through HDF5.
    """

    bytes_per_thread = 2**20
    """Decoded bytes below which one more thread is not worth its hand-off."""

    def __init__(self, ds: h5py.Dataset, threads: int = 1) -> None:
        self.ds = ds
        self.ftype = ds.id.get_type()
        self._mspaces: dict[tuple[int, ...], h5py.h5s.SpaceID] = {}
        self.raw = _same_layout(ds) and self._first_row_agrees()
        self.threads = max(1, int(threads))
        self._pool: ThreadPoolExecutor | None = None
        self._span: np.ndarray | None = None
        self._chunk_rows = ds.chunks[0] if ds.chunks else 0
        self._chunk_tail = (0,) * (ds.ndim - 1)
        self._row_bytes = ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64))
        self.decoders = self._chunk_decoders() if self.raw else None
        if self.decoders is not None and not self._first_chunk_agrees():
            self.decoders = None

    @property
    def chunked(self) -> bool:
        """True if rows are read by decoding the stored chunks in this process."""
        return self.decoders is not None

    @property
    def returns_views(self) -> bool:
        """True if :meth:`read_rows` works (a view of a reused buffer): chunks decoded here."""
        return self.chunked

    def _raw_read(self, buf: np.ndarray, start: int) -> None:
        fspace = self.ds.id.get_space()
        fspace.select_hyperslab((start,) + (0,) * (buf.ndim - 1), buf.shape)
        mspace = self._mspaces.get(buf.shape)
        if mspace is None:
            mspace = self._mspaces[buf.shape] = h5py.h5s.create_simple(buf.shape)
        self.ds.id.read(mspace, fspace, buf, mtype=self.ftype)

    def _first_row_agrees(self) -> bool:
        if self.ds.shape[0] == 0:
            return True
        ref = self.ds[0:1]
        raw = np.zeros_like(ref)
        self._raw_read(raw, 0)
        return all(ref[n].tobytes() == raw[n].tobytes() for n in ref.dtype.names)

    def _chunk_decoders(self) -> list[Callable[[bytes, np.ndarray], int] | None] | None:
        """Decoder per filter of the pipeline (None = no filter), or None if unsupported."""
        ds = self.ds
        if ds.chunks is None or ds.chunks[1:] != ds.shape[1:] or ds.shape[0] == 0:
            return None
        dcpl = ds.id.get_create_plist()
        decoders = []
        for i in range(dcpl.get_nfilters()):
            code = dcpl.get_filter(i)[0]
            if code == LZF_FILTER:
                decoders.append(_lzf_decoder())
            elif code == h5py.h5z.FILTER_DEFLATE:
                decoders.append(_zlib_decoder)
            else:
                return None
        if len(decoders) > 1 or None in decoders:
            return None  # several filters (e.g. shuffle + gzip) or no LZF decoder: HDF5
        return decoders

    def _first_chunk_agrees(self) -> bool:
        rows = min(self.ds.chunks[0], self.ds.shape[0])
        ref = np.zeros((rows, *self.ds.shape[1:]), self.ds.dtype)
        self._raw_read(ref, 0)
        try:
            got = self.read_rows(0, rows)
        except (OSError, ValueError, RuntimeError, zlib.error):
            return False
        return ref.tobytes() == got.tobytes()

    def _decode(self, chunk: int, data: bytes, mask: int, out: np.ndarray, rows: int) -> None:
        """Decode (at least) the first ``rows`` rows of chunk ``chunk`` into ``out``.

        ``out`` holds the whole chunk. LZF streams decode front to back, so a chunk of
        which only the first rows are needed (the last chunk of a batch) is decoded only
        that far (plus one token).
        """
        decode = self.decoders[0] if self.decoders and not mask & 1 else None
        flat = out.reshape(-1).view(np.uint8)
        if decode is None:  # stored without filter (or the filter was skipped)
            if len(data) != out.nbytes:
                raise ValueError(f"chunk at row {chunk}: {len(data)} bytes, not {out.nbytes}")
            flat[:] = np.frombuffer(data, np.uint8)
            return
        need = rows * self._row_bytes
        part = need < out.nbytes and decode is not _zlib_decoder
        if part:
            flat = flat[: min(out.nbytes, need + 2 * LZF_MAX_TOKEN)]
        try:
            done = decode(data, flat)
        except zlib.error as err:  # a damaged deflate stream (bad bytes, failed checksum)
            raise ValueError(f"chunk at row {chunk} does not decompress ({err})") from err
        if done < (need if part else out.nbytes):
            raise ValueError(f"chunk at row {chunk} does not decode to {out.nbytes} bytes")

    def read(self, buf: np.ndarray, start: int) -> None:
        """Fill ``buf`` (dtype ``ds.dtype``, C-contiguous) from row ``start`` on.

        ``buf`` may hold fewer constituents than stored (``(B, n)`` of ``(N, T)``): the
        first ``n`` of each row are read.
        """
        if self.decoders is not None:
            cols = buf.shape[1] if buf.ndim > 1 else None
            buf[...] = self.read_rows(start, start + len(buf), cols)
        elif self.raw:
            self._raw_read(buf, start)
        else:
            rows = (slice(start, start + len(buf)), *(slice(0, n) for n in buf.shape[1:]))
            self.ds.read_direct(buf, rows)

    def read_rows(self, start: int, stop: int, cols: int | None = None) -> np.ndarray:
        """Rows ``[start, stop)`` (their first ``cols`` constituents) as a read-only view.

        Needs :attr:`chunked`. The chunks that hold the rows are decoded side by side into
        a buffer that this reader reuses (no copy afterwards), so the view is valid until
        the next call.
        """
        rows = self._chunk_rows
        first = start // rows * rows
        chunks = range(first, stop, rows)
        need = (len(chunks) * rows, *self.ds.shape[1:])
        if self._span is None or len(self._span) < need[0]:
            self._span = np.empty(need, self.ds.dtype)
        span = self._span
        jobs = [(c, span[c - first : c - first + rows], min(rows, stop - c)) for c in chunks]
        size = len(jobs) * rows * self._row_bytes
        threads = min(self.threads, len(jobs), 1 + size // self.bytes_per_thread)
        if threads == 1:  # small reads are not worth a thread hand-off
            self._chunk_jobs(jobs)
        else:  # one contiguous group of chunks per thread, the first on this one
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="saltx-h5")
            cuts = np.linspace(0, len(jobs), threads + 1).round().astype(int)
            groups = [jobs[a:b] for a, b in itertools.pairwise(cuts)]
            futures = [self._pool.submit(self._chunk_jobs, g) for g in groups[1:]]
            try:
                self._chunk_jobs(groups[0])
            finally:
                for future in futures:
                    future.result()
        view = span[start - first : stop - first]
        if cols is not None and cols != self.ds.shape[1]:
            view = view[:, :cols]
        view.flags.writeable = False
        return view

    def _chunk_jobs(self, jobs: list[tuple[int, np.ndarray, int]]) -> None:
        """Decode the first ``rows`` rows of the chunk at row ``chunk`` into ``out``, per job."""
        for chunk, out, rows in jobs:
            try:
                mask, data = self.ds.id.read_direct_chunk((chunk, *self._chunk_tail))
            except (OSError, KeyError, RuntimeError):  # e.g. never written: HDF5 fills it
                self._raw_read(out[: min(len(out), self.ds.shape[0] - chunk)], chunk)
                continue
            self._decode(chunk, data, mask, out, rows)


# -- packed constituents (files written by ``python -m saltx.data.pack``) ---------------------
PACK_ATTR = "saltx_packed"
"""File attribute of a packed file: the version of its layout (:data:`PACK_VERSION`)."""
PACK_VERSION = 1
PACK_GROUP = "saltx_pack"
"""Group of a packed file: ``<group>/<dataset>/{offsets, slots, padding}`` per packed dataset."""


def packed_datasets(f: h5py.File, name: str = "") -> set[str]:
    """Names of the datasets of ``f`` stored packed (empty for an ordinary file).

    Raises
    ------
    DataError
        If the file was packed with a layout version this saltx does not read.
    """
    if PACK_GROUP not in f:
        return set()
    version = f.attrs.get(PACK_ATTR)
    if version is None or int(version) != PACK_VERSION:
        raise DataError(
            f"'{name or f.filename}' was written by saltx.data.pack with layout version {version}; "
            f"this saltx reads version {PACK_VERSION}: repack it from the original file"
        )
    return set(f[PACK_GROUP])


class PackedReader:
    """A constituent dataset stored packed: its valid entries only, back to back.

    ``python -m saltx.data.pack`` writes, for a dataset ``tracks`` of shape ``(N, T)``:

    * ``tracks``: the valid records ``(M,)``, in row order, uncompressed and contiguous
      (a read is one byte copy from the file, no decoding);
    * ``saltx_pack/tracks/offsets`` ``(N + 1,)`` int64: jet ``j`` holds records
      ``[offsets[j], offsets[j + 1])``;
    * ``saltx_pack/tracks/slots`` ``(M,)``: the slot of each record, only when the valid
      entries of some jet are not its first slots (otherwise slots count from 0 per jet);
    * ``saltx_pack/tracks/padding`` ``(1,)``: the record found in every padded slot, for the
      fields listed in the group's ``exact_padding`` attribute (checked when packing).

    To :class:`saltx.data.dataset.JetDataset` it looks like the padded dataset (``shape``
    ``(N, T)``, ``dtype`` with ``valid``): :meth:`read_rows` rebuilds the padded rows, so
    that batches are bit for bit those of the original file.
    """

    returns_views = True
    """:meth:`read_rows` returns a view of a buffer this reader reuses."""

    def __init__(self, f: h5py.File, name: str, source_name: str = "") -> None:
        name = name.lstrip("/")
        group = f[PACK_GROUP][name]
        ds = f[name]
        self.records = RowReader(ds)
        self.name = ds.name
        self.dtype = ds.dtype
        self.file_name = source_name or f.filename
        self._offsets = group["offsets"]
        self._slots = group.get("slots")
        self.padding = group["padding"][:1]
        self.slot_count = int(group.attrs["slots"])
        self.exact_padding = {str(x) for x in group.attrs.get("exact_padding", [])}
        self.shape = (self._offsets.shape[0] - 1, self.slot_count)
        self.ndim = 2
        self._recbuf: np.ndarray | None = None
        self._padded: np.ndarray | None = None
        self._written: np.ndarray | None = None  # flat slots filled by the last read

    @property
    def where(self) -> str:
        return f"packed dataset '{self.name.lstrip('/')}' of '{self.file_name}'"

    def check(self) -> None:
        """Cheap integrity checks: offsets, slot indices and padding agree with the records.

        Reads the first and last offsets, :data:`SAMPLE_ROWS` evenly spaced ones and the
        first 4097; never a pass over the file.

        Raises
        ------
        DataError
            Naming the packed dataset and what does not fit.
        """
        n, total = self.shape[0], self.records.ds.shape[0]
        if self.records.ds.ndim != 1 or self._offsets.ndim != 1 or n < 0:
            raise DataError(f"{self.where}: records must be 1-D and offsets (jets + 1,)")
        if self.padding.dtype != self.dtype or len(self.padding) != 1:
            raise DataError(f"{self.where}: its padding record does not match its fields")
        if "valid" not in (self.dtype.names or ()):
            raise DataError(f"{self.where}: its records have no 'valid' field")
        picks = sorted({0, n, *np.linspace(0, n, SAMPLE_ROWS).astype(int).tolist()})
        sampled = self._offsets[picks]
        head = self._offsets[: min(n, 4096) + 1]
        if sampled[0] != 0 or sampled[-1] != total:
            raise DataError(
                f"{self.where}: offsets run from {sampled[0]} to {sampled[-1]}, expected 0 to "
                f"its {total} records (the file was not completely written); repack it"
            )
        counts = np.diff(head)
        if (np.diff(sampled) < 0).any() or (counts < 0).any() or (counts > self.slot_count).any():
            raise DataError(
                f"{self.where}: offsets are not increasing by 0 to {self.slot_count} per jet; "
                "the file is damaged, repack it"
            )
        if self._slots is not None:
            if self._slots.shape != (total,):
                raise DataError(
                    f"{self.where}: {self._slots.shape[0]} slot indices, {total} records"
                )
            if total and self._slots[: min(total, 4096)].max() >= self.slot_count:
                raise DataError(f"{self.where}: slot indices beyond {self.slot_count} slots")
        check_storage(self.records.ds, self.file_name, global_object=False)

    def check_exact(self, fields: Sequence[str], what: str) -> None:
        """``fields`` (labels) must have their padding value reproduced exactly.

        Raises
        ------
        DataError
            For a field whose padded slots did not all hold one value when packing.
        """
        inexact = [x for x in fields if x not in self.exact_padding]
        if inexact:
            raise DataError(
                f"{what} {inexact} of {self.where}: their padded slots did not all hold one "
                "value when the file was packed, so padded labels would differ from the "
                "original file; repack it with these fields as labels (--labels) or read the "
                "original file"
            )

    def _records_between(self, a: int, b: int) -> np.ndarray:
        if self._recbuf is None or len(self._recbuf) < b - a:
            self._recbuf = np.empty(max(b - a, 1), self.dtype)
        recs = self._recbuf[: b - a]
        if b > a:
            self.records.read(recs, a)
        return recs

    def _buffer(self, rows: int) -> np.ndarray:
        """The padded buffer, at least ``rows`` jets; slots written last time padded again."""
        if self._padded is None or len(self._padded) < rows:
            self._padded = np.empty((rows, self.slot_count), self.dtype)
            self._padded[...] = self.padding[0]
            self._written = None
        if self._written is not None:
            self._records(self._padded)[self._written] = self._records(self.padding)[0]
            self._written = None
        return self._padded

    def _records(self, a: np.ndarray) -> np.ndarray:
        """Flat records of a contiguous array as opaque bytes (copied as a whole, 17x faster
        than numpy's field-by-field copy of structured elements)."""
        return a.reshape(-1).view(f"V{self.dtype.itemsize}")

    def read_rows(self, start: int, stop: int, cols: int | None = None) -> np.ndarray:
        """Padded rows ``[start, stop)`` (their first ``cols`` slots) as a read-only view.

        The view is valid until the next call.

        Raises
        ------
        ValueError
            If the offsets or slot indices of these rows are inconsistent (damaged file).
        """
        offsets = self._offsets[start : stop + 1]
        a, b = int(offsets[0]), int(offsets[-1])
        counts = np.diff(offsets)
        rows = stop - start
        if (counts < 0).any() or (counts > self.slot_count).any() or b > self.records.ds.shape[0]:
            raise ValueError(f"offsets of jets [{start}, {stop}) are inconsistent")
        recs = self._records_between(a, b)
        if self._slots is not None:
            slots = self._slots[a:b].astype(np.int64)
            if len(slots) and (slots.max() >= self.slot_count or slots.min() < 0):
                raise ValueError(f"slot indices of jets [{start}, {stop}) are out of range")
        else:
            slots = np.arange(b - a) - np.repeat(offsets[:-1] - a, counts)
        flat = np.repeat(np.arange(rows, dtype=np.int64) * self.slot_count, counts) + slots
        padded = self._buffer(rows)
        self._records(padded)[flat] = self._records(recs)
        self._written = flat
        view = padded[:rows] if cols is None else padded[:rows, :cols]
        view.flags.writeable = False
        return view


class LazyH5:
    """An h5 file opened on first use, once per process.

    A handle opened in a parent process is never used in a forked child: the child sees
    a different pid and opens its own handle. Pickling (spawned workers) drops the handle.
    ``read_threads`` threads decode the chunks of each read (see :class:`RowReader`).
    """

    def __init__(self, source: H5Source, read_threads: int = 1) -> None:
        self.source = source
        self.read_threads = read_threads
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._readers: dict[str, RowReader | PackedReader] = {}
        self._packed: set[str] | None = None  # packed datasets of the open file

    @property
    def name(self) -> str:
        """The source's name for messages."""
        return describe_source(self.source)

    @property
    def file(self) -> h5py.File:
        """The open handle for this process."""
        pid = os.getpid()
        if self._file is None or self._pid != pid:
            self._file = open_h5(self.source)
            self._pid = pid
            self._readers = {}
            self._packed = None
        return self._file

    @property
    def packed(self) -> set[str]:
        """The datasets stored packed (a file written by ``saltx.data.pack``; else empty)."""
        f = self.file
        if self._packed is None:
            self._packed = packed_datasets(f, self.name)
        return self._packed

    def reader(self, name: str) -> RowReader | PackedReader:
        """The reader of dataset ``name`` for this process (cached): a :class:`PackedReader`
        for a dataset of a packed file, else a :class:`RowReader`."""
        f = self.file
        reader = self._readers.get(name)
        if reader is None:
            if name.lstrip("/") in self.packed:
                reader = PackedReader(f, name, self.name)
            else:
                reader = RowReader(f[name], self.read_threads)
            self._readers[name] = reader
        return reader

    def close(self) -> None:
        """Close the handle if this process opened it."""
        if self._file is not None and self._pid == os.getpid():
            owned = getattr(self._file, "saltx_owned_fileobj", None)
            self._file.close()
            if owned is not None:
                owned.close()
        self._file = None
        self._pid = None
        self._readers = {}
        self._packed = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None, "_pid": None, "_readers": {}, "_packed": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
