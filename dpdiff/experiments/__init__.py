"""Paper experiments built on the engine: ablations (Tables 5-9, Figs. 5-6), category scale (Table 2),
FPS benchmark (Table 4), the kNN comparison, and the demo. Nothing below this package imports it."""
