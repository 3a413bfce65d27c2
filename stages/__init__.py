"""One thin script per dvc.yaml stage: read params, call gradiend_core, write the outputs."""
