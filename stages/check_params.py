"""Stage check_params: validate params.yaml before any stage deletes its outputs.

Every stage depends on the marker this writes; its content never changes, so
a valid edit reruns only the stages whose own params changed.
"""
from kd.files import write_json
from kd.params import unusual
from kd.paths import PARAMS_OK
from kd_pipeline.stage import stage

with stage("check_params") as run:
    for note in run.params.method.ignored():
        print(f"[check_params] note: {note}")
    for note in unusual(run.params):
        print(f"[check_params] warning: {note}")
    write_json(PARAMS_OK, {"params.yaml": "valid"})
