//! `herald publish <stream> [<data>|-]`: one event from the argument or stdin, or — with
//! `--lines` — one event per line of stdin as the lines arrive (`tail -f log | herald publish
//! logs - --lines`). Prints each new event's id; a refusal prints the server's reason and exits
//! non-zero.

use clap::Args;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use super::{http_client, refusal, unreachable, CliError, Target};

#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// The stream to publish to.
    pub stream: String,

    /// The event's data. `-`, or nothing, reads it from stdin (one trailing newline dropped).
    pub data: Option<String>,

    /// The event's type (`event:` in SSE; `addEventListener(type, …)` in a browser).
    #[arg(long)]
    pub event: Option<String>,

    /// Publish each line of stdin as its own event, as the lines arrive.
    #[arg(long)]
    pub lines: bool,

    #[command(flatten)]
    pub target: Target,
}

pub async fn run(args: PublishArgs) -> Result<(), CliError> {
    let client = http_client()?;
    let from_stdin = matches!(args.data.as_deref(), None | Some("-"));
    if args.lines {
        if !from_stdin {
            return Err(CliError::Input(
                "--lines reads stdin: pass - (or nothing) instead of data".into(),
            ));
        }
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines
            .next_line()
            .await
            .map_err(|e| CliError::Input(format!("cannot read stdin: {e}")))?
        {
            println!("{}", publish(&client, &args, line).await?);
        }
        return Ok(());
    }
    let data = match args.data.clone() {
        Some(data) if !from_stdin => data,
        _ => read_stdin().await?,
    };
    println!("{}", publish(&client, &args, data).await?);
    Ok(())
}

async fn read_stdin() -> Result<String, CliError> {
    let mut bytes = Vec::new();
    tokio::io::stdin()
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| CliError::Input(format!("cannot read stdin: {e}")))?;
    let mut text = String::from_utf8(bytes)
        .map_err(|_| CliError::Input("stdin is not UTF-8 text; herald stores text".into()))?;
    // `echo hello | herald publish s` means "hello", not "hello\n".
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

/// One `POST /streams/{stream}` with a raw body; the new event's id.
pub async fn publish(
    client: &reqwest::Client,
    args: &PublishArgs,
    data: String,
) -> Result<String, CliError> {
    let url = args.target.at(&format!(
        "/streams/{}",
        utf8_percent_encode(&args.stream, NON_ALPHANUMERIC)
    ));
    let mut request = client
        .post(&url)
        .header("content-type", "text/plain; charset=utf-8")
        .body(data);
    if let Some(event) = &args.event {
        request = request.query(&[("event", event)]);
    }
    let response = args
        .target
        .authorize(request)
        .send()
        .await
        .map_err(|e| unreachable(&url, e))?;
    if !response.status().is_success() {
        return Err(refusal(response).await);
    }
    let body: serde_json::Value = response.json().await.map_err(|e| unreachable(&url, e))?;
    body["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| CliError::Input(format!("{url} answered without an id: {body}")))
}
