"""S3 requests for the object-storage tests (tests/e2e/storage.rs), signed by boto3 against the
loopback S3 server the test started (moto's server mode), independently of Dispatcher's client.

    s3_object.py ENDPOINT BUCKET create      creates the bucket
    s3_object.py ENDPOINT BUCKET get KEY     writes the object's bytes to stdout; exit 3 if absent

Credentials are the fixed test ones the test gives Dispatcher too.
"""

import sys

import boto3
from botocore.exceptions import ClientError

ABSENT = 3


def main(argv):
    endpoint, bucket, command = argv[1], argv[2], argv[3]
    if not endpoint.startswith("http://127.0.0.1:"):
        print(f"refusing a non-loopback endpoint {endpoint}", file=sys.stderr)
        return 2
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    if command == "create":
        s3.create_bucket(Bucket=bucket)
        return 0
    if command == "get":
        try:
            body = s3.get_object(Bucket=bucket, Key=argv[4])["Body"].read()
        except ClientError as e:
            if e.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return ABSENT
            raise
        sys.stdout.buffer.write(body)
        return 0
    print(f"unknown command {command}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
