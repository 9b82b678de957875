"""Every synthetic data generator: scenes, documents, charts, scans, surfaces, point clouds, instruction
and preference data, defects, fake PII, fonts, the `data synth` corpus writer and the synthetic suites.

A leaf: only `vlstack.demo`, the CLI and the tests import it; the library layers never do.
"""
