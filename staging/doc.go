// Package staging is the S3-compatible staging store, over minio-go: object
// stat, streaming reads with parallel ranged requests read ahead in bounded
// memory, bounded multipart writes, and deletes; plus the decoder of S3
// bucket notifications. Its subpackage s3local is the in-process S3
// endpoint of the embedded default.
package staging
