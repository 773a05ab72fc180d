"""The one exception type for errors a user can cause, and the reject codes.

A `VRDataError` names the offending path and the reason in one line; the CLI prints
`str(error)` and exits non-zero. `ConfigError` is the same type for an invalid setting (a model
or training config, an option) rather than bad data, so callers can tell the two apart. Scans and builds catch it per file, record it as a reject
(`Reject`) and go on, so a bad file never aborts a whole job.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

# Reject reason codes, stable strings written to rejects files and counted in summaries.
UNREADABLE = "unreadable"        # not decodable / corrupt / unknown format
EMPTY = "empty"                  # zero samples
TOO_SHORT = "too_short"          # shorter than the minimum duration
SILENT = "silent"                # peak below the silence threshold everywhere
NON_FINITE = "non_finite"        # NaN or inf samples
CHANNELS = "channels"            # unsupported channel count
UNMATCHED = "unmatched"          # a pair member without its partner
PARTNER_REFUSED = "partner_refused"  # a pair member whose partner was refused
AMBIGUOUS = "ambiguous"          # several candidates for one pair partner
LENGTH_MISMATCH = "length_mismatch"  # pair members differ in length beyond the tolerance
OFFSET = "offset"                # pair members are shifted in time beyond the threshold
ESCAPES_ROOT = "escapes_root"    # a path outside the dataset root
MISSING = "missing"              # a file named by a manifest is not there
HASH_MISMATCH = "hash_mismatch"  # a file's sha256 no longer matches its manifest
TRUNCATED = "truncated"          # decodes to fewer samples than its header declares
PAIR_CHECK = "pair_check"        # a pair failing a pair check under scan --pair-checks strict
DUPLICATE = "duplicate"          # the same audio as another item of the split (an exclusion list)
LEAK = "leak"                    # the same audio as an item of a held-out split (an exclusion list)
UNAVAILABLE = "unavailable"      # exists but cannot be opened (permission denied, I/O error): may pass on a retry


class VRDataError(Exception):
    """A user-caused problem with `path`; `reason` is human text, `code` a reject code."""

    def __init__(self, path: str | Path | None, reason: str, code: str = UNREADABLE):
        self.path = str(path) if path is not None else None
        self.reason = reason
        self.code = code
        super().__init__(f"{self.path}: {reason}" if self.path else reason)

    def __reduce__(self):  # picklable across dask worker processes
        return (type(self), (self.path, self.reason, self.code))


class ConfigError(VRDataError):
    """An invalid setting: a model or training config key, or an option; `path` is the config
    file when there is one."""


@dataclass(frozen=True)
class Reject:
    """One refused input: `path` relative to its root where possible."""

    path: str
    code: str
    reason: str
    role: str | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_error(cls, error: VRDataError, path: str | None = None, role: str | None = None) -> "Reject":
        return cls(path=path or error.path or "", code=error.code, reason=error.reason, role=role)
