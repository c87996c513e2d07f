FROM python:3.12-slim
MAINTAINER Jane Doe <jane@example.org>
RUN mkdir -p /usr/src/app
WORKDIR /usr/src/app
ONBUILD COPY requirements.txt /usr/src/app/
ONBUILD RUN pip install --no-cache-dir -r requirements.txt
ONBUILD COPY . /usr/src/app
ENTRYPOINT ["python"]
CMD ["app.py"]
