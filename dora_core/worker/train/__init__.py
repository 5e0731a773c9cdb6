"""Training a job: resolve it (``plan``), build its method (``methods/``), run the loop.

- ``plan``: a JobConfig resolved once into a Plan, every machine check first;
- ``methods/``: dora / lora / adalora / full behind one interface;
- ``loop``: the optimizer-step loop, evaluation, checkpoints, cancel, ``train()``;
- ``evaluation``, ``checkpoint``, ``ddp``: one concern each;
- ``artifacts``: ``dora export`` / ``dora merge`` of a finished or interrupted run.

May import: the library, the contracts, ``dora_core.worker.{data,models,telemetry}``,
torch, transformers, peft. The loop, the methods and the reporting read the
plan, never the raw job.
"""
