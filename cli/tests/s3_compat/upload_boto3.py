"""Uploads three ERA5-like objects to an S3-compatible server the way a new user would: with
boto3's defaults (which, in recent boto3, add a CRC32 checksum to every upload).

    python3 upload_boto3.py ENDPOINT BUCKET OUT_DIR

Creates BUCKET, uploads the objects and writes each one's bytes to OUT_DIR/<key>, so the test
can compare the mirror with exactly what was uploaded. Prints one JSON line per object: key,
size, ETag, and the checksum headers a GET and a HEAD answer with checksum mode on.
"""

import json
import os
import random
import sys

import boto3
from boto3.s3.transfer import TransferConfig

MIB = 1024 * 1024
PRODUCT = "e5.oper.an.sfc"
MONTH = "202401"
WINDOW = "2024010100_2024013123"


def key(code_and_short):
    return f"{PRODUCT}/{MONTH}/{PRODUCT}.{code_and_short}.ll025sc.{WINDOW}.nc"


# (key, size, transfer config): boto3's default config uploads 5 MiB in one PUT and 30 MiB in
# 8 MiB parts (four: 8, 8, 8, 6); a low threshold with a 32 MiB chunk makes 20 MiB a multipart
# upload of one part.
OBJECTS = [
    (key("128_167_2t"), 5 * MIB, TransferConfig()),
    (
        key("128_165_10u"),
        20 * MIB,
        TransferConfig(multipart_threshold=1 * MIB, multipart_chunksize=32 * MIB),
    ),
    (key("128_151_msl"), 30 * MIB, TransferConfig()),
]


def main():
    endpoint, bucket, out_dir = sys.argv[1:4]
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=bucket)
    # Readable by anyone, like the real ERA5 bucket: era5 reads it unsigned. (moto checks a
    # HEAD as the action s3:HeadObject, where AWS checks s3:GetObject.)
    client.put_bucket_policy(
        Bucket=bucket,
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": "*",
                        "Action": ["s3:GetObject", "s3:HeadObject", "s3:ListBucket"],
                        "Resource": [
                            f"arn:aws:s3:::{bucket}",
                            f"arn:aws:s3:::{bucket}/*",
                        ],
                    }
                ],
            }
        ),
    )
    for index, (name, size, config) in enumerate(OBJECTS):
        data = random.Random(index).randbytes(size)
        path = os.path.join(out_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        client.upload_file(path, bucket, name, Config=config)
        head = client.head_object(Bucket=bucket, Key=name, ChecksumMode="ENABLED")
        get = client.get_object(Bucket=bucket, Key=name, ChecksumMode="ENABLED")
        get["Body"].close()

        def sums(response):
            return {
                k: v
                for k, v in response["ResponseMetadata"]["HTTPHeaders"].items()
                if k.startswith("x-amz-checksum")
            }

        print(
            json.dumps(
                {
                    "key": name,
                    "size": size,
                    "etag": head["ETag"].strip('"'),
                    "head": sums(head),
                    "get": sums(get),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
