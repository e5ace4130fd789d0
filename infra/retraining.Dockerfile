# The retraining job as a container-image Lambda: its training dependencies (LightGBM with
# scipy, onnx) are ~289 MB installed, over the 250 MB a zip function and its layers may hold.
# Built by `cdk deploy` (the CDK asset); `cdk synth` only stages this context.
FROM public.ecr.aws/lambda/python:3.12
COPY pyproject.toml uv.lock README.md ./
RUN pip install --no-cache-dir uv \
 && uv export --frozen --no-dev --extra train --no-emit-project --no-hashes -o /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt --target "${LAMBDA_TASK_ROOT}" \
 && pip uninstall -y uv && rm /tmp/requirements.txt
COPY functions/smartgrid "${LAMBDA_TASK_ROOT}/smartgrid"
# The handler string comes from the CDK app (catalog.RETRAINING) as the image's CMD.
