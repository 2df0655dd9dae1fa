"""Test support shipped with the package, for this project's tests, benchmarks and plugin authors: fake
sessions and encoders (``fakes``), a tiny generated CLIP (``clip``), the hostile-input corpus (``hostile``)
and process-tree memory sampling (``memory``). Nothing outside this package imports it (a layers
contract checks that)."""
