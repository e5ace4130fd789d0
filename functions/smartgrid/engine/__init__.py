"""The forecasting and anomaly engine: readings, features, ONNX inference, accuracy measures.

Pure computation on numpy and onnxruntime. It imports no AWS SDK, no pynamodb, no FastAPI and
nothing from ``domain``; the bundled models (``models/default``) and holiday calendars
(``calendars/``) ship beside it."""
