"""Stage evaluate: test-set numbers for teacher, baseline student and distilled student,
and what each model costs to run."""
import _bootstrap  # noqa: F401

from kd.checkpoint import load_model
from kd.datasets import DATASETS
from kd.evaluate import confusion_rows, predict, summarize
from kd.figures import confusion_matrix
from kd.files import write_csv, write_json
from kd.model_cost import model_cost, model_latency
from kd.models import count_params
from kd.paths import METRICS, model_file
from kd.stage import load_split, stage

ROLES = ("teacher", "baseline", "student")

with stage("evaluate") as run:
    p = run.params
    info = DATASETS[p.data.dataset]
    x, y = load_split("test")
    results, cost, latency = {}, {}, {}
    for role in ROLES:
        model, _ = load_model(model_file(role))
        logits = predict(model.to(run.device), x, device=run.device)
        summary = summarize(logits, y, info.num_classes, p.omit_classes)
        write_csv(METRICS / "per_class" / f"{role}.csv",
                  [{"class": info.classes[int(c)], "accuracy": round(a, 4)}
                   for c, a in summary.pop("per_class_accuracy").items()])
        results[role] = {**summary, "params": count_params(model)}
        write_csv(METRICS / "confusion" / f"{role}.csv", confusion_rows(logits, y, info.classes))
        cost[role] = model_cost(model, info.shape)
        latency[role] = model_latency(model, info.shape)
        run.tracking.log_figure(lambda: confusion_matrix(logits, y, info.classes, f"{role}, test set"),
                                f"confusion/{role}.png")
        print(f"{role:9s} test accuracy {summary['accuracy']:.4f} ({summary['errors']} errors), "
              f"{cost[role]['macs']:,} MACs, {latency[role]['cpu_ms_per_image_batch1']:.3f} ms/image on CPU")
    results["kd_gain"] = round(results["student"]["accuracy"] - results["baseline"]["accuracy"], 6)
    write_json(METRICS / "evaluate.json", results)
    # Size numbers are exact and stable; latency is a wall-clock measurement, kept apart
    # so that a rerun leaves model_cost.json byte-identical.
    write_json(METRICS / "model_cost.json", cost)
    write_json(METRICS / "latency.json", latency)
