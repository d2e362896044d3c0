"""Fetch dataset files over HTTP(S) with verification; never hangs, never half-writes.

Each file is streamed to `<name>.part` with a socket timeout, verified, fsync'd
and renamed into place, so an interrupted download leaves nothing that the
dataset search would pick up.  After one network failure in a process, further
downloads are skipped at once (the error says so): a job with 2 splits x 2
files must not wait 4 timeouts on a machine without network.

Verification: a spec gives either `payload_sha256` (sha256 of the *decompressed*
IDX bytes - independent of gzip headers, which differ between mirrors) or
`md5` + `size` of the .gz file as published by the mirror (used for MNIST, whose
upstream publishes no sha256).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import time

__all__ = ["DownloadError", "download_file", "offline", "TIMEOUT_S"]

TIMEOUT_S = 10.0          # per socket operation (connect, each read)
MAX_TOTAL_S = 600.0       # whole file, however slowly it trickles in
_network_failed: str | None = None


class DownloadError(RuntimeError):
    pass


def offline() -> bool:
    return os.environ.get("DPTRAIN_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def _verify(path: str, spec: dict) -> None:
    if "size" in spec and os.path.getsize(path) != spec["size"]:
        raise DownloadError(f"{os.path.basename(path)}: size {os.path.getsize(path)} bytes, "
                            f"expected {spec['size']}")
    if "md5" in spec:
        h = hashlib.md5()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != spec["md5"]:
            raise DownloadError(f"{os.path.basename(path)}: md5 {h.hexdigest()}, expected {spec['md5']}")
    if "payload_sha256" in spec:
        h = hashlib.sha256()
        try:
            with gzip.open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except (OSError, EOFError) as e:
            raise DownloadError(f"{os.path.basename(path)}: not a valid gzip file ({e})") from None
        if h.hexdigest() != spec["payload_sha256"]:
            raise DownloadError(f"{os.path.basename(path)}: sha256 of the content {h.hexdigest()}, "
                                f"expected {spec['payload_sha256']}")


def download_file(urls, dest: str, spec: dict, timeout: float | None = None) -> str:
    """Download the first mirror that works to `dest` (verified, atomic). Returns dest."""
    global _network_failed
    timeout = TIMEOUT_S if timeout is None else timeout
    import urllib.error      # imported here: `import engine` should not pay for urllib
    import urllib.request
    if _network_failed is not None:
        raise DownloadError(f"skipped: an earlier download in this process failed ({_network_failed})")
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    part = dest + ".part"
    errors = []
    for url in urls:
        try:
            start = time.monotonic()
            with urllib.request.urlopen(url, timeout=timeout) as r, open(part, "wb") as f:
                while True:
                    chunk = r.read(1 << 16)
                    if not chunk:
                        break
                    f.write(chunk)
                    if time.monotonic() - start > MAX_TOTAL_S:
                        raise DownloadError(f"took longer than {MAX_TOTAL_S:.0f} s")
                f.flush()
                os.fsync(f.fileno())
            _verify(part, spec)
            os.replace(part, dest)
            return dest
        except DownloadError as e:
            errors.append(f"{url}: {e}")
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            errors.append(f"{url}: {getattr(e, 'reason', e)}")
        finally:
            if os.path.exists(part):
                os.remove(part)
    msg = "; ".join(errors)
    _network_failed = msg
    raise DownloadError(msg)
