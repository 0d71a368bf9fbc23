"""The HTTP model server of scoring pods: Open Inference Protocol V2, AML-style /score, metrics."""
