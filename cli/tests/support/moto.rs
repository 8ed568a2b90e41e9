//! moto's S3 server (from PyPI, installed by `scripts/test`), a second, independent S3
//! implementation the tests mirror from and into, so that we do not only agree with ourselves.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Scratch;

/// A boto3 client of moto's server at `sys.argv[1]`, with any keys (moto checks none).
const BOTO3_CLIENT: &str = "import sys, boto3\n\
    client = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', \
    aws_access_key_id='era5test', aws_secret_access_key='era5testsecret')";

/// moto's S3 server on a loopback port, stopped when dropped.
pub struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Moto {
    pub fn start(scratch: &Scratch) -> Self {
        for module in ["moto.server", "boto3"] {
            let imports = python(scratch)
                .args(["-c", &format!("import {module}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                imports,
                "python3 cannot import {module}: run scripts/test, which installs moto[server] \
                 and boto3 from PyPI"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = scratch.dir.path().join("moto.log");
        let out = std::fs::File::create(&log).expect("moto log");
        let child = python(scratch)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn moto's server");
        let mut moto = Moto { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto's server exited ({status}):\n{}", moto.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "moto's server did not listen within 60 s:\n{}",
                moto.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates `bucket` (through boto3, as a user would).
    pub fn create_bucket(&self, scratch: &Scratch, bucket: &str) {
        let made = python(scratch)
            .args([
                "-c",
                &format!("{BOTO3_CLIENT}\nclient.create_bucket(Bucket=sys.argv[2])"),
            ])
            .args([&self.endpoint(), bucket])
            .output()
            .expect("run boto3");
        assert!(
            made.status.success(),
            "creating {bucket} in moto failed: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }

    /// Every object of `bucket`: its size and the MD5 of the bytes moto serves, by key.
    pub fn objects(
        &self,
        scratch: &Scratch,
        bucket: &str,
    ) -> std::collections::BTreeMap<String, (u64, String)> {
        let script = format!(
            "{BOTO3_CLIENT}\nimport hashlib, json\n\
             for page in client.get_paginator('list_objects_v2').paginate(Bucket=sys.argv[2]):\n\
             \x20   for o in page.get('Contents', []):\n\
             \x20       body = client.get_object(Bucket=sys.argv[2], Key=o['Key'])['Body'].read()\n\
             \x20       print(json.dumps([o['Key'], len(body), hashlib.md5(body).hexdigest()]))"
        );
        let listed = python(scratch)
            .args(["-c", &script])
            .args([&self.endpoint(), bucket])
            .output()
            .expect("run boto3");
        assert!(
            listed.status.success(),
            "listing {bucket} in moto failed: {}",
            String::from_utf8_lossy(&listed.stderr)
        );
        String::from_utf8_lossy(&listed.stdout)
            .lines()
            .map(|line| {
                let (key, size, md5): (String, u64, String) =
                    serde_json::from_str(line).expect("a JSON line per object");
                (key, (size, md5))
            })
            .collect()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `python3` with no AWS settings of the developer's (boto3's defaults are what is tested).
pub fn python(scratch: &Scratch) -> Command {
    let mut command = Command::new("python3");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("AWS_") {
            command.env_remove(&name);
        }
    }
    command.env("HOME", scratch.home()).stdin(Stdio::null());
    command
}
