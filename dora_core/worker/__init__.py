"""The job runner: one job config in, a trained adapter and a telemetry stream out.

- ``cli``: the ``dora`` command (train, export, merge, presets);
- ``data``, ``models``: datasets and models from presets or local files;
- ``train/``: the plan (a job resolved once), the methods, the loop,
  evaluation, checkpoints, DDP, export/merge of finished runs;
- ``telemetry/``: the journaled reporter that streams records to the API.

May import: the method library (``dora_core``), the contracts, torch,
transformers, peft, httpx. Nothing imports the worker but its own CLI,
the study scripts and the tests (tests/test_layers.py checks).
"""
