// Package staging is the S3-compatible staging store, over minio-go: object
// stat, streaming reads with parallel ranged requests read ahead in bounded
// memory, bounded multipart writes, deletes, and bucket notification rules.
// Its subpackage s3local is the in-process S3 endpoint of the embedded
// default; notify decodes S3 bucket notifications and bridges them into
// upload jobs.
package staging
