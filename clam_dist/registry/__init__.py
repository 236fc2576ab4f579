"""Scheduled batch pipelines: a model registry on any fsspec URL (versions, cards,
aliases), one command per partition (assign with the champion, measure drift, refresh
warm, gate, promote), cluster ids that stay put across refreshes, and a timeline report.

Layout of one registered model ``<registry>/<name>/`` (docs/design.md, "Running on a
schedule"):

- ``v0001/`` ... one folder per version: ``model/`` (the artifact), ``card.json`` (parent,
  training partitions, data fingerprint, config, metrics, id mapping; written last, so a
  version whose card exists is complete), ``claim.json`` (created exclusively: two
  publishers never take one number);
- ``aliases/<alias>.json`` (``champion``, ``challenger``) and ``aliases/history/NNNNNN.json``
  (every change, in order; nothing is ever lost);
- ``partitions/<key>.json``: what ran for one partition (model version, assignments URL,
  drift, refresh and gate decision, cluster sizes);
- ``assignments/dt=<key>/model=v0003/``: the committed assignments of one partition;
- ``reservoir/<key>.parquet``: a bounded sample of each partition, for later refreshes.
"""
