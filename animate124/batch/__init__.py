"""``animate124 batch``: many assets, one project each, run as Ray tasks (one per asset).

Modules, in the order a batch meets them:

- :mod:`~animate124.batch.jobs`: the rows of a jobs file (CSV/JSONL) or a folder of images, and the
  project name of each row (unique, stable across reruns);
- :mod:`~animate124.batch.plan`: each row checked with ``run-all``'s pre-flight before any task starts,
  its config and job key, and what a rerun does with it (run, resume, skip as up to date, or leave a
  failed one alone); the models fetched once;
- :mod:`~animate124.batch.task`: the body of one Ray task: ``run-all``'s pre-flight and pipeline in the
  worker process, its state written to ``<out>/.batch/<asset>.json`` as it goes;
- :mod:`~animate124.batch.driver`: Ray (local or an existing cluster), one task per asset with its GPU and
  CPU count, the wait loop, progress read back from the projects' files, Ctrl-C that lets runs checkpoint;
- :mod:`~animate124.batch.summary`: ``<out>/batch.json`` and the index page ``<out>/index.html``.

Ray is an optional dependency (``pip install "animate124[batch]"``); only the driver imports it.
"""
