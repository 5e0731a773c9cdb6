"""The "New job" form on the Runs page: presets and schema from the API, 422s inline.

Defaults, descriptions, types and choices come from ``GET /api/jobs/schema``
(the worker's own JobConfig), so the form cannot drift from what the worker
accepts. The form does no validation of its own beyond reading numbers: the
API's 422 answer names the field, and its message is shown next to it.

The task (classification, causal-lm, seq2seq) decides what the form offers: the
model and dataset presets that serve it (``tasks`` in ``GET /api/presets``), and
the fields that belong to it (``FIELD_TASKS``); a field of another task is
hidden and left out of the job, so switching tasks back and forth sends only
what the chosen task reads.
"""

from __future__ import annotations

import re
from typing import Any

from dash import Dash, Input, Output, State, dcc, html, no_update

from dashboard import components as ui
from dashboard.api import ApiClient, ApiError
from dora_core.contracts.job import ADAPTER_SETTINGS
from dora_core.contracts.wire import GENERATIVE_TASKS, TASKS

# Form-only fields: a local folder/file instead of a preset (sent as model/dataset).
PATH_FIELDS = {"model_path": "model", "dataset_path": "dataset"}
DEFAULT_TASK = "classification"
GENERATIVE_FIELDS = [
    "prompt_column",
    "completion_column",
    "chat_template",
    "train_on_prompt",
    "max_new_tokens",
    "max_gen_samples",
    "generate_every",
]
# Fields only some tasks read (every other field: all of them). text_column is also the
# column of plain-text language modelling (a causal-lm file with neither prompts nor chat).
FIELD_TASKS: dict[str, frozenset[str]] = {
    "label_column": frozenset({"classification"}),
    "head_lr": frozenset({"classification"}),
    "text_column": frozenset({"classification", "causal-lm"}),
    **{f: GENERATIVE_TASKS for f in GENERATIVE_FIELDS},
}

SECTIONS: list[tuple[str, list[str]]] = [
    (
        "basic",
        [
            "name",
            "task",
            "model",
            "dataset",
            "method",
            "target_rank",
            "init_rank",
            "epochs",
            "max_steps",
            "lr",
            "batch_size",
            "seed",
        ],
    ),
    # The DoRA settings the job schema takes from DoraConfig, less the ones in "basic".
    (
        "DoRA knobs",
        [f for f in ADAPTER_SETTINGS if f not in ("target_rank", "init_rank", "target_modules")],
    ),
    (
        "Data",
        [
            "max_train_samples",
            "max_dev_samples",
            "max_length",
            "dev_fraction",
            "model_path",
            "dataset_path",
            "text_column",
            "label_column",
        ],
    ),
    ("Generation", GENERATIVE_FIELDS),
    (
        "Training",
        [
            "grad_accum",
            "head_lr",
            "weight_decay",
            "warmup_ratio",
            "lr_scheduler",
            "grad_clip",
            "eval_every",
            "checkpoint_every",
            "report_every",
            "target_modules",
            "device",
        ],
    ),
]
FIELDS = [f for _, fields in SECTIONS for f in fields]
ADVANCED = {f for name, fields in SECTIONS if name != "basic" for f in fields}

LABELS = {
    "name": "Run name",
    "task": "Task",
    "model": "Model",
    "dataset": "Dataset",
    "method": "Method",
    "target_rank": "Budget b(T)",
    "init_rank": "Start rank r'",
    "epochs": "Epochs",
    "max_steps": "Steps (overrides epochs)",
    "lr": "Learning rate",
    "batch_size": "Batch size",
    "seed": "Seed",
    "alpha": "alpha",
    "dropout": "Dropout",
    "beta": "EMA beta",
    "warmup_frac": "Warm-up share t_i/T",
    "final_frac": "Final share t_f/T",
    "prune_interval": "Prune interval",
    "dem_weight": "DEM weight eta",
    "dem_after_freeze": "Keep DEM after freeze",
    "model_path": "Local model folder",
    "dataset_path": "Local dataset file",
    "max_train_samples": "Max train samples",
    "max_dev_samples": "Max dev samples",
    "max_length": "Max tokens",
    "dev_fraction": "Dev fraction",
    "text_column": "Text column",
    "label_column": "Label column",
    "grad_accum": "Gradient accumulation",
    "head_lr": "Head learning rate",
    "weight_decay": "Weight decay",
    "warmup_ratio": "LR warm-up ratio",
    "lr_scheduler": "LR schedule",
    "grad_clip": "Gradient clip",
    "eval_every": "Eval every (steps)",
    "checkpoint_every": "Checkpoint every (steps)",
    "report_every": "Report scores every (steps)",
    "target_modules": "Target modules",
    "device": "Device",
    "prompt_column": "Prompt column",
    "completion_column": "Completion column",
    "chat_template": "Chat template",
    "train_on_prompt": "Train on prompt tokens",
    "max_new_tokens": "Max new tokens",
    "max_gen_samples": "Generated dev samples",
    "generate_every": "Generate every (steps)",
}
PLACEHOLDERS = {
    "name": "auto: method-model-dataset",
    "init_rank": "auto: ceil(1.5 × b(T))",
    "max_steps": "from epochs",
    "head_lr": "default: the learning rate",
    "model_path": "instead of the preset, e.g. /models/my-bert",
    "dataset_path": "instead of the preset, e.g. /data/reviews.csv",
    "target_modules": "comma-separated suffixes, default: all projections",
    "chat_template": "default: the tokenizer's own",
    "generate_every": "default: at the end only",
}
NO_PRESET = "No {kind} preset serves {task}: give a local {what} under Advanced"
PATH_HELP = {
    "model_path": "A transformers model folder inside the API's model roots (DORA_MODEL_ROOTS)",
    "dataset_path": "A .csv, .jsonl or .parquet file inside the API's dataset roots "
    "(DORA_DATASET_ROOTS), or hf:NAME[:CONFIG] from the API machine's datasets cache",
}
NULL_WORDS = {"none", "null", "off"}
HIDDEN = {"display": "none"}
# The fields whose visibility follows the task, in a fixed order (the callback's outputs).
TASK_BOUND = list(FIELD_TASKS)
_INT = re.compile(r"^[+-]?\d+$")


def schema_kind(prop: dict) -> str:
    """'integer', 'number', 'boolean', 'array', 'enum' or 'string' for one schema property."""
    if "enum" in prop:
        return "enum"
    types = [prop.get("type")] + [alt.get("type") for alt in prop.get("anyOf", [])]
    for kind in ("integer", "number", "boolean", "array"):
        if kind in types:
            return kind
    return "string"


def _nullable(prop: dict) -> bool:
    return any(alt.get("type") == "null" for alt in prop.get("anyOf", []))


def _parse_number(text: str, kind: str) -> Any:
    """'5e-4' -> 0.0005, '8' -> 8; anything unreadable is sent as typed, so the
    API's 422 names the field and says what it expected."""
    if kind == "integer" and _INT.match(text):
        return int(text)
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if kind == "integer" and value.is_integer() else value


def shows_for(field: str, task: str | None) -> bool:
    """Whether the form offers ``field`` for a job of ``task``."""
    return field not in FIELD_TASKS or (task or DEFAULT_TASK) in FIELD_TASKS[field]


def form_to_config(values: dict[str, Any], schema: dict) -> dict[str, Any]:
    """Form values -> job config body. Blank fields are left out (the default applies), and
    so are the fields of other tasks than the chosen one (hidden in the form)."""
    props = schema.get("properties", {})
    task = values.get("task")
    config: dict[str, Any] = {}
    for field, raw in values.items():
        if not shows_for(field, task):
            continue
        target = PATH_FIELDS.get(field, field)
        prop = props.get(target, {})
        kind = schema_kind(prop)
        if kind == "boolean":
            config[target] = bool(raw)
            continue
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            continue
        text = raw.strip() if isinstance(raw, str) else raw
        if isinstance(text, str) and text.lower() in NULL_WORDS and _nullable(prop):
            config[target] = None
        elif kind == "array":
            config[target] = [p.strip() for p in str(text).split(",") if p.strip()]
        elif kind in ("integer", "number") and isinstance(text, str):
            config[target] = _parse_number(text, kind)
        else:
            config[target] = text
    # a path typed into the advanced section wins over the preset dropdown
    for path_field, target in PATH_FIELDS.items():
        if values.get(path_field) and str(values[path_field]).strip():
            config[target] = str(values[path_field]).strip()
    return config


def errors_for_fields(err: ApiError) -> tuple[dict[str, str], str | None]:
    """Split a 422 into messages shown next to form fields and one for the whole form."""
    shown = {f: m for f, m in err.field_errors.items() if f in FIELDS}
    for path_field, target in PATH_FIELDS.items():
        if target in err.field_errors:
            shown[path_field] = err.field_errors[target]
    rest = [f"{f}: {m}" for f, m in err.field_errors.items() if f not in FIELDS]
    if not err.field_errors:
        return {}, err.message
    return shown, "; ".join(rest) or None


def serves(preset: dict, task: str | None) -> bool:
    """A preset serves the tasks it lists (an API from before tasks: classification)."""
    return (task or DEFAULT_TASK) in (preset.get("tasks") or [DEFAULT_TASK])


def _preset_options(presets: list[dict], kind: str, task: str | None = None) -> list[dict]:
    """The installed-or-not presets of ``kind`` that serve ``task``."""
    options = []
    for p in presets:
        if p.get("kind") != kind or not serves(p, task):
            continue
        label = f"{p['name']} — {p.get('description', '')}"
        if not p.get("available"):
            label += " (not installed)"
        options.append({"label": label, "value": p["name"], "disabled": not p.get("available")})
    return options


def _default_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _first_installed(options: list[dict]) -> str | None:
    return next((o["value"] for o in options if not o["disabled"]), None)


def _no_preset(field: str, task: str | None) -> str:
    what = "model folder" if field == "model" else "dataset file"
    return NO_PRESET.format(kind=field, task=ui.task_label(task or DEFAULT_TASK), what=what)


def _widget(
    field: str, prop: dict, presets: list[dict], prefill: dict[str, Any], task: str | None
) -> Any:
    fid = f"job-{field}"
    kind = schema_kind(prop)
    default = prefill[field] if field in prefill else prop.get("default")
    if field in ("method", "task"):
        label = ui.method_label if field == "method" else ui.task_label
        return dcc.RadioItems(
            id=fid,
            options=[{"label": label(m), "value": m} for m in prop.get("enum", [])],
            value=default,
            inline=True,
            className="radio",
        )
    if field in ("model", "dataset") or kind == "enum":
        presets_of = field in ("model", "dataset")
        options = _preset_options(presets, field, task) if presets_of else prop.get("enum", [])
        if presets_of and default is None:
            # required, no default: the first installed preset, so one click still submits
            default = _first_installed(options)
        return dcc.Dropdown(
            id=fid,
            options=options,
            value=default,
            clearable=False,
            placeholder=_no_preset(field, task) if presets_of and not options else None,
            className="form-dropdown",
        )
    if kind == "boolean":
        return dcc.Checklist(
            id=fid, options=[{"label": " on", "value": True}], value=[True] if default else []
        )
    basic = field not in ADVANCED or field in prefill
    if kind == "array" and isinstance(default, list):  # target_modules: comma-separated
        default = ", ".join(map(str, default))
    return dcc.Input(
        id=fid,
        type="text",
        inputMode="decimal" if kind in ("integer", "number") else "text",
        # basic fields show their default as a value; advanced ones as a hint
        value=_default_text(default) if basic and (kind != "array" or field in prefill) else None,
        placeholder=PLACEHOLDERS.get(field)
        or (f"default {default}" if default is not None else "optional"),
        className="input",
        autoComplete="off",
    )


def _field(
    field: str, props: dict, presets: list[dict], prefill: dict[str, Any], task: str | None
) -> html.Div:
    prop = props.get(PATH_FIELDS.get(field, field), {})
    help_text = PATH_HELP.get(field) or prop.get("description", "")
    return html.Div(
        [
            html.Label(LABELS.get(field, field), htmlFor=f"job-{field}", title=help_text),
            _widget(field, prop if field not in PATH_FIELDS else {}, presets, prefill, task),
            html.Div(help_text, className="help"),
            html.Div(id=f"job-error-{field}", className="field-error", role="alert"),
        ],
        className="field",
        id=f"job-field-{field}",
        style={} if shows_for(field, task) else HIDDEN,
    )


def prefill_from(config: dict[str, Any], presets: list[dict]) -> dict[str, Any]:
    """A run's job config as form values: a model or dataset that is not a preset goes to
    its local-path field; the run directory and name are left for the new job to choose."""
    values = {k: v for k, v in config.items() if k not in ("output_dir", "name")}
    names = {p["name"] for p in presets}
    for path_field, field in PATH_FIELDS.items():
        if field in values and values[field] not in names:
            values[path_field] = values.pop(field)
    if config.get("name"):
        values["name"] = f"{config['name']} (clone)"
    return values


def layout(client: ApiClient, clone: int | None = None) -> html.Div:
    """The form (prefilled from run ``clone``'s config), or why it cannot be shown."""
    try:
        schema = client.job_schema()
        presets = client.presets()
        prefill = {}
        if clone:
            cloned = client.run(clone)
            config = cloned.get("config") or {}
            config = {**config, "name": cloned.get("name") or config.get("name")}
            prefill = prefill_from(config, presets)
    except ApiError as err:
        return ui.card("New job", ui.api_error_state(err), class_name="form-card")
    props = schema.get("properties", {})
    task = prefill.get("task") or props.get("task", {}).get("default") or DEFAULT_TASK
    basic = [_field(f, props, presets, prefill, task) for f in SECTIONS[0][1]]
    advanced = [
        html.Div(
            [
                html.H4(title),
                html.Div(
                    [_field(f, props, presets, prefill, task) for f in fields],
                    className="grid-form",
                ),
            ],
            className="form-section",
            id=f"job-section-{title.lower().replace(' ', '-')}",
            style={} if title != "Generation" or task in GENERATIVE_TASKS else HIDDEN,
        )
        for title, fields in SECTIONS[1:]
    ]
    return ui.card(
        "New job",
        html.Div(basic, className="grid-form"),
        html.Details(
            [html.Summary("Advanced: DoRA knobs, data, generation, training"), *advanced],
            id="job-advanced",
            open=bool(prefill),
            className="advanced",
        ),
        html.Div(id="job-error-form", className="form-error", role="alert"),
        html.Div(
            [
                html.Button("Start job", id="job-submit", className="btn btn-primary"),
                html.Span("Blank fields take the default shown.", className="muted small"),
            ],
            className="form-actions",
        ),
        dcc.Store(id="job-schema", data=schema),
        dcc.Store(id="job-presets", data=presets),
        class_name="form-card",
    )


def for_task(
    task: str | None, presets: list[dict], model: str | None, dataset: str | None
) -> tuple[Any, ...]:
    """What changes with the task: the style of each TASK_BOUND field, the Generation
    section's style, then options, value and placeholder of the model and of the dataset
    dropdown. A chosen preset that serves the task stays chosen; otherwise the first
    installed one that does (none: the dropdown says to give a local path)."""
    task = task if task in TASKS else DEFAULT_TASK
    out: list[Any] = [{} if shows_for(f, task) else HIDDEN for f in TASK_BOUND]
    out.append({} if task in GENERATIVE_TASKS else HIDDEN)
    for field, current in (("model", model), ("dataset", dataset)):
        options = _preset_options(presets, field, task)
        fits = any(o["value"] == current and not o["disabled"] for o in options)
        out += [
            options,
            current if fits else _first_installed(options),
            None if options else _no_preset(field, task),
        ]
    return tuple(out)


def submit(
    client: ApiClient, schema: dict, values: dict[str, Any]
) -> tuple[str | None, dict[str, str], str | None]:
    """Post the job: (path of the new run's page, field errors, form error)."""
    try:
        answer = client.submit_job(form_to_config(values, schema))
    except ApiError as err:
        fields, general = errors_for_fields(err)
        return None, fields, general
    run_id = answer.get("run_id") or (answer.get("run") or {}).get("id")
    return f"/runs/{run_id}", {}, None


def register(app: Dash, client: ApiClient) -> None:
    @app.callback(
        *[Output(f"job-field-{f}", "style") for f in TASK_BOUND],
        Output("job-section-generation", "style"),
        *[
            Output(f"job-{field}", prop)
            for field in ("model", "dataset")
            for prop in ("options", "value", "placeholder")
        ],
        Input("job-task", "value"),
        State("job-presets", "data"),
        State("job-model", "value"),
        State("job-dataset", "value"),
    )
    def _task(task, presets, model, dataset):
        return for_task(task, presets or [], model, dataset)

    @app.callback(
        Output("url", "pathname", allow_duplicate=True),
        Output("url", "search", allow_duplicate=True),
        Output("job-error-form", "children"),
        Output("job-advanced", "open"),
        *[Output(f"job-error-{f}", "children") for f in FIELDS],
        Input("job-submit", "n_clicks"),
        State("job-schema", "data"),
        *[State(f"job-{f}", "value") for f in FIELDS],
        prevent_initial_call=True,
        running=[(Output("job-submit", "disabled"), True, False)],
    )
    def _submit(n_clicks, schema, *values):
        # url is in the shell's layout, so Dash calls this when the form is
        # inserted, prevent_initial_call or not: only a real click submits
        if not n_clicks:
            return (no_update,) * (4 + len(FIELDS))
        path, field_errors, general = submit(
            client, schema or {}, dict(zip(FIELDS, values, strict=True))
        )
        errors = [field_errors.get(f) for f in FIELDS]
        open_advanced = any(f in ADVANCED for f in field_errors) or no_update
        return (
            path or no_update,
            "" if path else no_update,  # the run page's URL, not /runs/N?new=1
            ui.error_state(general) if general else None,
            open_advanced,
            *errors,
        )
