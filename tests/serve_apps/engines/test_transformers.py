"""The transformers engine's adapters through their whole life: names peft could clash with, and
requests after the active adapter (or the last one) was unloaded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest, CompletionResponse

from serve_apps.engines.transformers import TransformersEngine
from serve_apps.protocol import LoadedAdapter

pytestmark = pytest.mark.slow


def test_adapters_load_and_unload_in_any_order(local_model_dir: Path, lora_adapters: dict[str, Path]) -> None:
    async def scenario() -> None:
        engine = TransformersEngine(str(local_model_dir), "base", {"dtype": "float32"})
        await engine.start()

        async def text(adapter: LoadedAdapter | None) -> str:
            request = CompletionRequest.model_validate(
                {"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}
            )
            body = await engine.completions(request, adapter)
            assert isinstance(body, CompletionResponse)
            return body.choices[0].text

        base = await text(None)
        # `half` is also a method of every torch module peft would attach the adapter to.
        half = LoadedAdapter("half", str(lora_adapters["adapter-a"]), 1.0)
        other = LoadedAdapter("other", str(lora_adapters["adapter-b"]), 1.0)
        await engine.load_adapter(half)
        await engine.load_adapter(other)
        adapted = await text(half)
        assert adapted != base
        await engine.unload_adapter("half")  # the active one, with another left
        assert await text(None) == base
        assert await text(other) != base
        await engine.unload_adapter("other")  # the last one
        assert await text(None) == base
        await engine.load_adapter(half)
        assert await text(half) == adapted
        engine.shutdown()

    asyncio.run(scenario())
