"""Contracts: what the worker, the API and the dashboard agree on, importable without torch.

- ``job``: the job config schema (JobConfig), its parsing and its error type;
- ``presets``: the named models and datasets that install offline;
- ``wire``: run statuses, methods (and which prune), telemetry record shapes;
- ``rundir``: a run directory's file names and the spool's commit rule;
- ``hosts``: which host names count as this machine (loopback rules);
- ``rankgrid``: rows of (layer, module type, value) as a layers x types matrix;
- ``params``: the parameter count of live adapter components.

May import: the standard library, pydantic, pyyaml and ``dora_core.config``
(a dataclass, stdlib only). Never torch, transformers or the worker: the
backend and the dashboard import these modules (tests/test_layers.py checks).
"""
