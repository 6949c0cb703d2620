"""Smoke test of {{ cookiecutter.name }}: the artifact loads in its runtime and answers the
declaration's example with the declared outputs. Run `pytest` in this folder."""

import asyncio
from pathlib import Path

from modelyard.declarations.load import example_request
from modelyard.declarations.folders import load_model_folder

HERE = Path(__file__).resolve().parent


def test_the_artifact_answers_the_example() -> None:
    settings = load_model_folder(HERE)  # checks the folder as `modelyard validate` does
    declared = {o.name: o for o in settings.outputs}
    model = settings.implementation(settings)

    async def run():
        assert await model.load()
        return await model.predict(example_request(HERE))

    response = asyncio.run(run())
    answered = {o.name: o for o in response.outputs}
    for name, spec in declared.items():
        assert name in answered, f"the model did not answer its declared output {name!r}"
        assert answered[name].datatype == spec.datatype
        assert len(answered[name].shape) == len(spec.shape)
