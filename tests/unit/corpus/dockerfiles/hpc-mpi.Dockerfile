# HPC image: OpenMPI from source, then an MPI application.
ARG BASE_IMAGE=rockylinux:9
ARG OMPI_VERSION=4.1.6

FROM ${BASE_IMAGE} AS mpi
ARG OMPI_VERSION
ENV OMPI_DIR /opt/ompi
ENV PATH="$OMPI_DIR/bin:$PATH" \
    LD_LIBRARY_PATH="$OMPI_DIR/lib:${LD_LIBRARY_PATH}"
RUN dnf install -y gcc gcc-c++ make wget bzip2 perl && dnf clean all
WORKDIR /tmp/build
RUN wget -q https://download.open-mpi.org/release/open-mpi/v${OMPI_VERSION%.*}/openmpi-${OMPI_VERSION}.tar.bz2 \
    && tar xjf openmpi-${OMPI_VERSION}.tar.bz2 \
    && cd openmpi-${OMPI_VERSION} \
    # configure without the ancient verbs stack
    && ./configure --prefix=$OMPI_DIR --without-verbs \
    && make -j"$(nproc)" install

FROM mpi AS app
WORKDIR src
COPY *.c Makefile ./
RUN make CC=mpicc

FROM ${BASE_IMAGE}
ENV OMPI_DIR=/opt/ompi
ENV PATH=$OMPI_DIR/bin:$PATH
COPY --from=0 /opt/ompi /opt/ompi
COPY --from=app /tmp/build/src/ring /usr/local/bin/
LABEL org.example.mpi.version=${OMPI_VERSION:-unknown} org.example.base="${BASE_IMAGE}"
CMD ["mpirun", "-n", "2", "ring"]
