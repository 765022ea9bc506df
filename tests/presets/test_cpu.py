from presets.cpu import FLOAT32_MAX_GB, chosen_dtype, cpu_serving_dtype


def test_cpu_serves_float32_whatever_the_processor() -> None:
    assert cpu_serving_dtype(0.135).dtype == "float32"
    assert cpu_serving_dtype(3.0).dtype == "float32"
    # A model of unknown size (a custom directory) gets the policy's default too.
    assert cpu_serving_dtype(None).dtype == "float32"


def test_models_too_large_for_float32_stay_in_bfloat16() -> None:
    choice = cpu_serving_dtype(FLOAT32_MAX_GB / 4 + 0.5)
    assert choice.dtype == "bfloat16"
    assert "near-ties" in choice.reason


def test_a_chosen_dtype_says_so() -> None:
    assert chosen_dtype("bfloat16").dtype == "bfloat16"
    assert "--dtype" in chosen_dtype("bfloat16").reason
