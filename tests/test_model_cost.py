import math

from kd.checkpoint import new_model
from kd.model_cost import count_macs, model_cost, model_latency


def test_macs_of_the_mlps_are_their_matrix_products():
    # fvcore counts one multiply-add as one flop; normalisation, ReLU and dropout count 0.
    teacher = new_model("mlp1200", "mnist", dropout=0.5, input_dropout=0.2)
    assert count_macs(teacher, (1, 28, 28)) == 784 * 1200 + 1200 * 1200 + 1200 * 10
    student = new_model("mlp800", "mnist")
    assert model_cost(student, (1, 28, 28)) == {"macs": 784 * 800 + 800 * 800 + 800 * 10, "params": 1_276_810}


def test_latency_is_a_positive_time_per_image_and_leaves_the_model_alone():
    model = new_model("mlp800", "mnist").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lat = model_latency(model, (1, 28, 28))
    assert set(lat) == {"cpu_ms_per_image_batch1", "cpu_ms_per_image_batch256"}
    assert all(math.isfinite(v) and v > 0 for v in lat.values())
    assert model.training and all((model.state_dict()[k] == v).all() for k, v in before.items())
