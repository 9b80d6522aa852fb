"""A W&B Report of a run, built from code: ``fusionkit report wandb RUN``.

The report (``wandb_workspaces.reports.v2``) shows the run's W&B runs - one per notebook, grouped
by the run id, and 03's one per method and seed - the way ``report.html`` shows the run folder:
the headline as text, then one section per question, each a panel grid over the W&B runs it is
about (fusion comparison: per-method bars of the test metric, mean and standard error over seeds,
and the validation curves; robustness; interactions and interpretability when the run has them;
the final model; each task's metrics; the predictions tables), then the run's facts. Which W&B
runs and which keys exist is read from the run's local mirror (``metrics.jsonl``): a panel is made
only for what was logged, and a run set names its runs (``Name in [...]``), so the report shows
this run's runs and no other.

Offline (the default without ``WANDB_API_KEY``; no network) the report's specification - the
library's own model object, serialised (``ReportViewspec`` JSON) - is written to
``wandb_report.json`` in the run folder, with how to publish it: ``wandb sync`` the run's offline
runs, then ``--mode online``, which builds the same report with the entity and project filled in
and saves it (``Report.save``). A run whose notebooks ran with ``wandb_mode: disabled`` has no
W&B runs: :class:`NoWandbRuns`, a clear message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusionkit import __version__
from fusionkit.data.base import atomic_write_text
from fusionkit.headline import STEP as HEADLINE_STEP
from fusionkit.headline import Headline
from fusionkit.report.folder import STEP_ORDER, RunFolder
from fusionkit.report.sections import TASK_METRIC

SPEC = "wandb_report.json"
DEFAULT_PROJECT = "fusionkit"  # what tracking.Tracker logs to when WANDB_PROJECT is not set
TASKS = ("captioning", "vqa", "retrieval")
WIDE = {"w": 24, "h": 10}  # a table across the grid


class NoWandbRuns(ValueError):
    """The run folder has no W&B runs to report on (its notebooks ran with W&B disabled)."""


@dataclass
class WandbRuns:
    """What a run folder's W&B runs hold, read from its local mirror: their display names per
    step (the notebook's own run and, for 03, the per-method ones), and the keys each logged."""

    run: RunFolder
    group: str
    project: str | None  # recorded by the notebooks (None: a run made before fusionkit recorded it)
    names: dict[str, str] = field(default_factory=dict)  # mirror run name -> W&B display name
    steps: dict[str, str] = field(default_factory=dict)  # mirror run name -> step
    history: dict[str, set[str]] = field(default_factory=dict)  # mirror run name -> logged metric keys
    summary: dict[str, set[str]] = field(default_factory=dict)  # mirror run name -> summary keys
    offline_dirs: list[Path] = field(default_factory=list)

    @classmethod
    def read(cls, run_dir: Path) -> WandbRuns:
        run = RunFolder.read(run_dir)
        if not run.records and not run.state:
            raise FileNotFoundError(f"{run_dir}: not a fusionkit run folder (no run.json, no metrics.jsonl)")
        group = str(run.state.get("run_id") or run_dir.name)
        offline = sorted(p for p in (run_dir / "wandb").glob("*run-*") if p.is_dir())
        out = cls(run, group, None, offline_dirs=offline)
        for r in run.records:
            name = str(r.get("run", r.get("step")))
            group = str(r.get("group") or out.group)
            if r.get("kind") == "config":
                where = r.get("wandb")
                if where is None:  # an older fusionkit: its runs went to W&B unless it was disabled (no folders)
                    if offline or _not_disabled(run, r.get("step", "")):
                        out.names[name], out.steps[name] = f"{group}/{name}", r["step"]
                elif where.get("mode") != "disabled":
                    out.names[name], out.steps[name] = str(where.get("name") or f"{group}/{name}"), r["step"]
                    out.project = out.project or where.get("project")
            elif r.get("kind") == "metrics":
                out.history.setdefault(name, set()).update(r.get("data", {}))
            elif r.get("kind") == "summary":
                out.summary.setdefault(name, set()).update(r.get("data", {}))
        if not out.names:
            modes = sorted(
                {str(p.get("wandb_mode")) for p in run.state.get("parameters", {}).values() if "wandb_mode" in p}
            )
            said = f" (wandb_mode: {', '.join(modes)})" if modes else ""
            raise NoWandbRuns(
                f"{run_dir}: the run has no W&B runs - its notebooks ran with W&B disabled{said}, so there is "
                "nothing for a W&B Report to show; its report.html has everything. Run the chain with "
                "-p common.wandb_mode=offline (or online) for W&B runs"
            )
        return out

    def of(self, step: str, own: bool = True) -> list[str]:
        """Mirror run names of ``step``: its notebook's own run, or (``own=False``) the others."""
        return [n for n, s in self.steps.items() if s == step and (n == step) == own]

    def runset(self, title: str, runs: list[str], entity: str = "", project: str = ""):
        import wandb_workspaces.reports.v2 as wr
        from wandb_workspaces import expr

        names = [self.names[n] for n in runs]
        return wr.Runset(name=title, entity=entity, project=project, filters=expr.And(expr.Metric("Name").isin(names)))


def _not_disabled(run: RunFolder, step: str) -> bool:
    mode = run.state.get("parameters", {}).get(step, {}).get("wandb_mode", "auto")
    return mode != "disabled"


@dataclass
class Built:
    report: Any  # wandb_workspaces.reports.v2.Report
    runs: WandbRuns
    project: str
    notes: list[str]

    def spec(self) -> dict[str, Any]:
        """The report's specification: the library's model object (``ReportViewspec``), as JSON."""
        return json.loads(self.report._to_model().model_dump_json(by_alias=True, exclude_none=True))

    def counts(self) -> tuple[int, int]:
        import wandb_workspaces.reports.v2 as wr

        grids = [b for b in self.report.blocks if isinstance(b, wr.PanelGrid)]
        return len(self.report.blocks), sum(len(g.panels) for g in grids)


def build(run_dir: str | Path, *, entity: str = "", project: str = "", online: bool = False) -> Built:
    """The report object of a run folder. ``online``: its run sets name the entity and project
    (what saving needs; the library looks the project up then, so only online)."""
    import wandb_workspaces.reports.v2 as wr

    run_dir = Path(run_dir)
    runs = WandbRuns.read(run_dir)
    notes = []
    if not project:
        project = runs.project or DEFAULT_PROJECT
        if runs.project is None:
            notes.append(f"the run does not record its W&B project (an older fusionkit): assuming {project!r}")
    if online and not entity:  # the API key's default entity (asks W&B: online only)
        import wandb

        entity = wandb.Api().default_entity or ""
    where = {"entity": entity, "project": project} if online else {}
    b = _Blocks(runs, where)
    b.headline()
    b.comparison()
    b.robustness()
    b.interactions()
    b.interpretability()
    b.final_model()
    b.tasks()
    b.predictions()
    b.data()
    b.facts()
    state = runs.run.state
    report = wr.Report(
        project=project,
        entity=entity,
        title=f"fusionkit {runs.group}"[:128],
        description=f"profile {state.get('profile', '?')}, started {state.get('created', '?')}; "
        f"the W&B runs of group {runs.group}",
        blocks=[wr.TableOfContents(), *b.blocks],
        width="fluid",
    )
    return Built(report, runs, project, notes + b.notes)


class _Blocks:
    def __init__(self, runs: WandbRuns, where: dict[str, str]):
        self.runs, self.where, self.run = runs, where, runs.run
        self.blocks: list[Any] = []
        self.notes: list[str] = []

    # helpers
    def _text(self, text: str):
        import wandb_workspaces.reports.v2 as wr

        self.blocks.append(wr.P(text))

    def _missing(self, *steps: str) -> bool:
        """A paragraph naming each step that did not finish; True when any did not."""
        gone = []
        for step in steps:
            status, error = self.run.status(step)
            if status != "done":
                gone.append(f"{step} {status}" + (f" ({error})" if error else ""))
        if gone:
            self._text("Missing: " + "; ".join(gone) + ".")
        return bool(gone)

    def _grid(self, title: str, runs: list[str], panels: list[Any], *more: tuple[str, list[str]]) -> None:
        """A panel grid over the W&B runs named (``more``: further run sets, tabs of the same grid)."""
        import wandb_workspaces.reports.v2 as wr

        sets = [(t, [r for r in rs if r in self.runs.names]) for t, rs in ((title, runs), *more)]
        sets = [(t, rs) for t, rs in sets if rs]
        if not panels or not sets:
            return
        runsets = [self.runs.runset(t, rs, **self.where) for t, rs in sets]
        self.blocks.append(wr.PanelGrid(runsets=runsets, panels=panels))

    def _tables(self, step: str, keys: list[str]) -> list[Any]:
        import wandb_workspaces.reports.v2 as wr

        logged = {k for k, r in self.run.tables.items() if r.get("step") == step}
        return [wr.WeavePanelSummaryTable(table_name=k, layout=wr.Layout(**WIDE)) for k in keys if k in logged]

    def _media(self, step: str, keys: list[str]) -> list[Any]:
        import wandb_workspaces.reports.v2 as wr

        logged = [k for k in keys if self.run.figures.get(k, {}).get("step") == step]
        return [wr.MediaBrowser(title=k, media_keys=[k], layout=wr.Layout(w=12, h=10)) for k in logged]

    def _heading(self, text: str) -> None:
        import wandb_workspaces.reports.v2 as wr

        self.blocks.append(wr.H1(text))

    # sections
    def headline(self) -> None:
        import wandb_workspaces.reports.v2 as wr

        self._heading("Headline")
        h = Headline.from_summary(self.run.summary(HEADLINE_STEP))
        if h is None:
            if not self._missing(HEADLINE_STEP):
                self._text("03_fusion_comparison logged no headline (an older fusionkit).")
            return
        name = "test R^2" if h.regression else "test accuracy"
        ci = "" if h.best_fusion_score_ci95 != h.best_fusion_score_ci95 else f" ± {h.best_fusion_score_ci95:.3f}"
        text = f"Best fusion method {h.best_fusion_method} reaches {name} {h.best_fusion_score:.3f}{ci}"
        if h.regression and h.best_fusion_mse is not None:
            text += f" (MSE {h.best_fusion_mse:.3f})"
        if h.margin is not None:
            verdict = "beats" if h.margin > 0 else "does not beat"
            points = f"{h.margin:+.3f} R^2" if h.regression else f"{100 * h.margin:+.1f} points"
            text += (f" and {verdict} the best single modality ({h.best_unimodal}, {h.best_unimodal_score:.3f})"
                     f" by {points}")  # fmt: skip
        text += f" ({h.n_methods} methods x {h.n_seeds} seeds; chosen on validation, reported on test)."
        self._text(text)
        data = self.run.summary("01_data_prep")
        facts = []
        if data.get("dataset"):
            facts.append(f"data: {data['dataset']} ({data.get('n_samples', '?')} samples)")
        final = self.run.summary("05_evaluate").get("test_accuracy")
        if final is not None:
            facts.append(
                f"final model ({self.run.summary('04_train').get('method', '?')}): test accuracy {float(final):.3f}"
            )
        ceilings = self.run.summary("01_data_prep").get("ceilings") or {}
        if ceilings:
            facts.append("documented ceilings: " + ", ".join(f"{k} {float(v):.3f}" for k, v in ceilings.items()))
        if facts:
            self.blocks.append(wr.UnorderedList(items=facts))
        keys = [
            k
            for k in (f"best_fusion_{h.metric}", f"best_unimodal_{h.metric}")
            if k in self.runs.summary.get(HEADLINE_STEP, ())
        ]
        panels = [wr.BarPlot(title=f"best fusion vs best single modality ({name})", metrics=keys)] if keys else []
        self._grid("03 · headline", [HEADLINE_STEP], panels + self._media(HEADLINE_STEP, ["interactions_heatmap"]))

    def comparison(self) -> None:
        import wandb_workspaces.reports.v2 as wr
        from wandb_workspaces.reports.v2 import Config

        step = "03_fusion_comparison"
        self._heading("Fusion comparison")
        if self._missing(step) and not self.runs.of(step, own=False):
            return
        per_seed = self.runs.of(step, own=False)
        tuned = [n for n in per_seed if n.endswith("/tuned")]
        untuned = [n for n in per_seed if n.count("/") == 1]
        trainings = tuned or untuned
        self._text(
            "Each fusion method and each modality alone, one W&B run per seed"
            + (" (the tuned configuration's retrainings; the untuned grid in the second run set)" if tuned else "")
            + ": bars are the mean over seeds with its standard error; the curves are the validation metric per epoch."
        )
        logged = set().union(*[self.runs.summary.get(n, set()) for n in trainings]) if trainings else set()
        history = set().union(*[self.runs.history.get(n, set()) for n in trainings]) if trainings else set()
        panels: list[Any] = []
        for metric in sorted(k for k in logged if k.startswith("test_")) + [k for k in ("params",) if k in logged]:
            panels.append(wr.BarPlot(title=f"{metric} per method", metrics=[metric], groupby=Config("method"),
                                     groupby_aggfunc="mean", groupby_rangefunc="stderr"))  # fmt: skip
        for metric in sorted(k for k in history if k.startswith("val_")):
            panels.append(wr.LinePlot(title=f"{metric} per epoch", x="Step", y=[metric], groupby=Config("method"),
                                      groupby_aggfunc="mean", groupby_rangefunc="stderr"))  # fmt: skip
        more = [("03 · untuned (each method's defaults)", untuned)] if tuned else []
        self._grid("03 · trainings per method and seed", trainings, panels, *more)
        tables = self._tables(step, ["comparison_summary", "rankings", "search_chosen"])
        self._grid("03 · comparison tables", [step], tables + self._media(step, ["comparison", "search_curves"]))

    def robustness(self) -> None:
        step = "03_fusion_comparison"
        keys = [
            "robustness_by_method",
            "robustness_summary",
            "missing_modality",
            "noise_curves",
            "modality_dropout_study",
        ]
        panels = self._tables(step, keys) + self._media(step, ["noise_curves"])
        if not panels:
            return
        self._heading("Robustness")
        summary = self.run.summary(step)
        if summary.get("most_robust_method"):
            rr = summary.get("most_robust_relative_robustness")
            self._text(f"Most robust fusion method: {summary['most_robust_method']}"
                       + (f" (relative robustness {float(rr):.3f})." if rr is not None else "."))  # fmt: skip
        self._grid("03 · robustness", [step], panels)

    def interactions(self) -> None:
        step = "03_fusion_comparison"
        keys = ["interaction_verdicts", "interaction_profile", "comparison_by_target", "interaction_evidence"]
        panels = self._tables(step, keys) + self._media(step, ["interaction_profile"])
        if panels:
            self._heading("Interactions")
            self._text("Which fusion works for which kind of interaction (the interaction targets), and the "
                       "interaction profile of the compared target.")  # fmt: skip
            self._grid("03 · interactions", [step], panels)

    def interpretability(self) -> None:
        step = "03_fusion_comparison"
        keys = ["weights_vs_importance", "known_information_check", "drop_importance"]
        panels = self._tables(step, keys) + self._media(step, ["modality_weights"])
        if panels:
            self._heading("Interpretability")
            points = self.run.summary(step).get("weights_point_to_informative")
            if points:
                self._text(f"The learned modality weights point to the informative modality in {points} cases.")
            self._grid("03 · interpretability", [step], panels)

    def final_model(self) -> None:
        import wandb_workspaces.reports.v2 as wr

        self._heading("Final model")
        self._missing("04_train", "05_evaluate")
        curves = sorted(self.runs.history.get("04_train", set()) - {"epoch"})
        panels: list[Any] = [wr.LinePlot(title="training curves", x="Step", y=curves)] if curves else []
        self._grid("04 · training", ["04_train"], panels + self._media("04_train", ["training_curves"]))
        logged = self.runs.summary.get("05_evaluate", set())
        panels = [wr.ScalarChart(title=k, metric=k) for k in ("test_accuracy", "test_macro_f1") if k in logged]
        ablation = sorted(k for k in logged if k.startswith("ablation/"))
        if ablation:
            panels.append(wr.BarPlot(title="test accuracy with modalities dropped", metrics=ablation))
        panels += self._tables("05_evaluate", ["ablation"]) + self._media(
            "05_evaluate", ["confusion_matrix", "modality_ablation"]
        )
        self._grid("05 · evaluation", ["05_evaluate"], panels)

    def tasks(self) -> None:
        import wandb_workspaces.reports.v2 as wr

        present = [t for t in TASKS if f"{t}_metrics" in self.run.tables]
        if not present:
            return
        self._heading("Tasks")
        logged = self.runs.summary.get("05_evaluate", set())
        for task in present:
            self.blocks.append(wr.H2(task))
            best = sorted(k for k in logged if k.startswith(f"{task}/best/"))
            if not best:  # a task without a "best" entry: each model's one number
                best = sorted(
                    k
                    for k in logged
                    if k.startswith(f"{task}/") and k.endswith(tuple(f"/{m}" for m in TASK_METRIC[task]))
                )
            panels: list[Any] = [wr.BarPlot(title=f"{task}: the best model on test", metrics=best)] if best else []
            tables = sorted(k for k, r in self.run.tables.items() if k.startswith(f"{task}_") and r.get("step") == "05_evaluate"
                            and not k.endswith("_samples"))  # fmt: skip
            figures = sorted(
                k for k, r in self.run.figures.items() if k.startswith(f"{task}_") and r.get("step") == "05_evaluate"
            )
            panels += self._tables("05_evaluate", tables) + self._media("05_evaluate", figures)
            self._grid(f"05 · {task}", ["05_evaluate"], panels)

    def predictions(self) -> None:
        keys = ["predictions", *[f"{t}_samples" for t in TASKS]]
        panels = self._tables("05_evaluate", keys)
        if panels:
            self._heading("Predictions")
            self._text("Sample predictions of the test split, with their images (W&B tables).")
            self._grid("05 · predictions", ["05_evaluate"], panels)

    def data(self) -> None:
        panels = self._media("01_data_prep", ["examples", "class_balance"]) + self._tables(
            "01_data_prep", ["class_balance"]
        )
        features = self._media("02_feature_extraction", ["feature_projection"]) + self._tables(
            "02_feature_extraction", ["feature_stats"]
        )
        if panels or features:
            self._heading("Data")
            self._grid("01 · data", ["01_data_prep"], panels)
            self._grid("02 · features", ["02_feature_extraction"], features)

    def facts(self) -> None:
        import wandb_workspaces.reports.v2 as wr

        self._heading("Run facts")
        state = self.run.state
        made_by = state.get("fusionkit_version")
        items = [f"run {self.runs.group}, profile {state.get('profile', '?')}, started {state.get('created', '?')}",
                 f"made by fusionkit {made_by}" if made_by else "made by an older fusionkit (it did not record its version)",
                 f"this report: fusionkit {__version__}"]  # fmt: skip
        if made_by and made_by != __version__:
            self.notes.append(f"the run was made by fusionkit {made_by}; this is {__version__}")
        for step in STEP_ORDER:
            status, error = self.run.status(step)
            secs = state.get("notebooks", {}).get(step, {}).get("seconds")
            items.append(
                f"{step}: {status}" + (f" in {secs} s" if secs is not None else "") + (f" ({error})" if error else "")
            )
        items += [f"{k} {v}" for k, v in (state.get("versions") or {}).items()]
        self.blocks.append(wr.UnorderedList(items=items))


def write_spec(built: Built) -> Path:
    path = built.runs.run.dir / SPEC
    atomic_write_text(path, json.dumps(built.spec(), indent=1) + "\n")
    return path


def publish(built: Built) -> str:
    """Save the report to W&B (needs the network and an API key); returns its URL."""
    built.report.save()
    return built.report.url
