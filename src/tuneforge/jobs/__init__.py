"""The job service: the store (keys, jobs, events, datasets), the path policy, plain service functions, workers
and the per-job training process. The REST API in `tuneforge.api` is a thin layer over `service`."""
