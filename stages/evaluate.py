"""Stage evaluate: test-set numbers for teacher, baseline student and distilled student,
and what each model costs to run."""
from kd.checkpoint import load_model
from kd.device import describe, hardware_info
from kd.evaluate import confusion_rows, per_class_errors, reliability_rows, report
from kd.files import write_csv, write_json
from kd.model_cost import model_cost, model_latency
from kd.models import count_params
from kd.paths import metrics_file, model_file, plot_file, split_file
from kd.inference import predict
from kd.splits import load_spec, load_split
from kd_pipeline.figures import confusion_matrix, reliability_diagram
from kd_pipeline.stage import stage

ROLES = ("teacher", "baseline", "student")  # teacher first: the others are compared with it

with stage("evaluate") as run:
    p = run.params
    info = load_spec()
    x, y = load_split("test")
    test = (split_file("test"), f"{p.data.dataset}-test")
    run.tracking.log_data_input(test[0], test[1], "evaluation", profile={"images": len(y)})
    # The omitted-class bias is fit on validation images only; the test set only reports it.
    val_x, val_y = load_split("val") if p.omit_classes else (None, None)
    results, cost, latency, logged = {}, {}, {}, {}
    # Test numbers always in fp32, whatever precision trained the models: the reference
    # every machine can compute.
    print(f"evaluating in fp32 on {describe(run.device)}")
    for role in ROLES:
        model, _ = load_model(model_file(role))
        model = model.to(run.device)
        logits = predict(model, x, device=run.device)
        if role == "teacher":
            teacher_logits = logits
            summary = report(logits, y, info.num_classes, p.omit_classes)
        else:
            val = (predict(model, val_x, device=run.device), val_y) if p.omit_classes else None
            summary = report(logits, y, info.num_classes, p.omit_classes, teacher_logits=teacher_logits, val=val)
        write_csv(plot_file("per_class", role), per_class_errors(logits, y, info.classes))
        results[role] = {**summary, "params": count_params(model)}
        write_csv(plot_file("confusion", role), confusion_rows(logits, y, info.classes))
        reliability = reliability_rows(logits, y)
        write_csv(plot_file("calibration", role), reliability)
        cost[role] = model_cost(model, info.shape)
        latency[role] = model_latency(model, info.shape)
        run.tracking.log_figure(lambda: confusion_matrix(logits, y, info.classes, f"{role}, test set"),
                                f"confusion/{role}.png")
        run.tracking.log_figure(lambda: reliability_diagram(reliability, f"{role}, test set"),
                                f"calibration/{role}.png")
        print(f"{role:9s} test accuracy {summary['accuracy']:.4f} ({summary['errors']} errors), "
              f"{cost[role]['macs']:,} MACs, {latency[role]['cpu_ms_per_image_batch1']:.3f} ms/image on CPU")
        fid = (f", top-1 agreement with the teacher {summary['agreement']:.4f}, "
               f"KL(teacher || {role}) {summary['kl_from_teacher']:.4f} nats") if role != "teacher" else ""
        print(f"{role:9s} ECE {summary['ece']:.4f}{fid}")
        if "corrected" in summary:
            fixed = summary["corrected"]
            print(f"{role:9s} bias {fixed['bias']:+.4f} on omitted classes {list(p.omit_classes)} (fit on val): "
                  f"test accuracy {summary['accuracy']:.4f} -> {fixed['accuracy']:.4f}, "
                  f"omitted classes {summary['omitted_accuracy']:.4f} -> {fixed['omitted_accuracy']:.4f}")
        # The test numbers on the MLflow model of this checkpoint (its page shows them).
        logged[role] = run.tracking.model_metrics(model_file(role), role, model, x[:4],
                                                  {**results[role], **cost[role]}, dataset=test)
    # The distilled student just evaluated becomes the registry's candidate.
    run.tracking.register(logged["student"], p.data.dataset, "student", alias="candidate",
                          description="The distilled student of the kd pipeline; metrics are on the test set.")
    results["kd_gain"] = round(results["student"]["accuracy"] - results["baseline"]["accuracy"], 6)
    results["hardware"] = hardware_info(run.device, "fp32")
    write_json(metrics_file("evaluate"), results)
    # Size numbers are exact and stable; latency is a wall-clock measurement, kept apart
    # so that a rerun leaves model_cost.json byte-identical.
    write_json(metrics_file("model_cost"), cost)
    write_json(metrics_file("latency"), latency)
