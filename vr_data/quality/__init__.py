"""Know what you train on: content duplicates and split leaks, exclusion lists, pair checks.

`search` finds files holding the same audio (fingerprints from `vr_data.dsp.fingerprint`, an
inverted index); `duplicates` turns matches among manifests into duplicate groups and leaks
and writes exclusion lists (`vr_data.catalog.exclusions` reads them). Layer: above `catalog`,
beside `store` (tests/test_layout.py); `stats` reports what it finds.
"""
