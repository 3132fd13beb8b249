# GPU image for training and inference. The base image's torch matches requirements.txt's pin
# (torch 2.11.0), so pip keeps it instead of downloading another build.
FROM pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime

# libsndfile: soundfile's audio I/O; make: the README's commands.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libsndfile1 make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /workspace
COPY requirements.txt requirements-nodeps.txt /tmp/
RUN pip install --no-cache-dir -r /tmp/requirements.txt \
    && pip install --no-cache-dir --no-deps -r /tmp/requirements-nodeps.txt

# The repository is mounted here at run time: docker run --gpus all -v $(pwd):/workspace IMAGE ...
# Inside the image the Python environment is the system one, so point the Makefile at it.
ENV PY=python \
    TORCH_HOME=/workspace/.cache/torch
CMD ["bash"]
