import pytest

from presets import SKUS, UnknownInstanceTypeError, get_sku

# name: (gpu_count, gpu_memory_gb, gpu_model, compute_capability, bf16, vcpus, memory_gb)
EXPECTED = {
    "Standard_NC6s_v3": (1, 16, "V100", "7.0", False, 6, 112),
    "Standard_NC12s_v3": (2, 16, "V100", "7.0", False, 12, 224),
    "Standard_NC24s_v3": (4, 16, "V100", "7.0", False, 24, 448),
    "Standard_NC24rs_v3": (4, 16, "V100", "7.0", False, 24, 448),
    "Standard_NC4as_T4_v3": (1, 16, "T4", "7.5", False, 4, 28),
    "Standard_NC8as_T4_v3": (1, 16, "T4", "7.5", False, 8, 56),
    "Standard_NC16as_T4_v3": (1, 16, "T4", "7.5", False, 16, 110),
    "Standard_NC64as_T4_v3": (4, 16, "T4", "7.5", False, 64, 440),
    "Standard_NV36ads_A10_v5": (1, 24, "A10", "8.6", True, 36, 440),
    "Standard_NV72ads_A10_v5": (2, 24, "A10", "8.6", True, 72, 880),
    "Standard_NC24ads_A100_v4": (1, 80, "A100", "8.0", True, 24, 220),
    "Standard_NC48ads_A100_v4": (2, 80, "A100", "8.0", True, 48, 440),
    "Standard_NC96ads_A100_v4": (4, 80, "A100", "8.0", True, 96, 880),
    "Standard_ND96asr_v4": (8, 40, "A100", "8.0", True, 96, 900),
    "Standard_ND96amsr_A100_v4": (8, 80, "A100", "8.0", True, 96, 1900),
    "Standard_NC40ads_H100_v5": (1, 94, "H100 NVL", "9.0", True, 40, 320),
    "Standard_NC80adis_H100_v5": (2, 94, "H100 NVL", "9.0", True, 80, 640),
    "Standard_ND96isr_H100_v5": (8, 80, "H100", "9.0", True, 96, 1900),
    "Standard_ND96isr_H200_v5": (8, 141, "H200", "9.0", True, 96, 1850),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sku_catalog(name: str):
    sku = SKUS[name]
    assert sku.name == name
    actual = (
        sku.gpu_count,
        sku.gpu_memory_gb,
        sku.gpu_model,
        sku.compute_capability,
        sku.bf16,
        sku.vcpus,
        sku.memory_gb,
    )
    assert actual == EXPECTED[name]
    assert sku.total_gpu_memory_gb == sku.gpu_count * sku.gpu_memory_gb


def test_gpu_counts_are_powers_of_two():
    # Tensor parallelism is planned as a power of two dividing the node's GPUs.
    assert all(sku.gpu_count & (sku.gpu_count - 1) == 0 for sku in SKUS.values())


def test_get_sku_is_case_insensitive():
    assert get_sku("standard_nc24ads_a100_v4") is SKUS["Standard_NC24ads_A100_v4"]
    assert get_sku(" STANDARD_NC6S_V3 ") is SKUS["Standard_NC6s_v3"]


def test_unknown_instance_type_suggests_the_closest():
    with pytest.raises(UnknownInstanceTypeError) as caught:
        get_sku("NC24ads_A100_v4")
    assert caught.value.suggestion == "Standard_NC24ads_A100_v4"
    assert "did you mean 'Standard_NC24ads_A100_v4'" in str(caught.value)
    assert "Standard_ND96isr_H200_v5" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_unknown_instance_type_without_a_close_match():
    with pytest.raises(UnknownInstanceTypeError, match=r"unknown GPU instance type 'h100'\. Known"):
        get_sku("h100")


def test_describe():
    assert SKUS["Standard_NC12s_v3"].describe() == "Standard_NC12s_v3 (2 x V100 16 GB)"
