//! The email provider: a rendered document becomes a MIME message and goes to the SMTP relay of
//! `smtp.url` over a pool of connections.

use dispatcher_config::{SmtpSettings, StartTls};
use dispatcher_core::email::{self, EmailRequest, Placement};
use dispatcher_core::{DispatchError, ErrorCode, TemplateFormat};
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MessageBuilder, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use uuid::Uuid;

/// How one send ended.
#[derive(Debug)]
pub enum Sent {
    /// The relay took the message; its reply (with the queue id, as most relays put it).
    Accepted { reply: String },
    /// A `5xx`: the relay will never take this message.
    Rejected(DispatchError),
    /// A `4xx`, a connection error or a timeout: worth another try later.
    Transient(DispatchError),
}

#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// The right-hand side of Message-IDs.
    domain: String,
}

impl Mailer {
    /// The mailer of `smtp`, or `None` when no relay is configured. Connects lazily: a relay that
    /// is down at start-up fails (and retries) the first sends, not the worker.
    pub fn from_settings(smtp: &SmtpSettings) -> anyhow::Result<Option<Self>> {
        if !smtp.enabled() {
            return Ok(None);
        }
        let url = url::Url::parse(smtp.url.expose())?;
        let host = url
            .host_str()
            .ok_or_else(|| anyhow::anyhow!("smtp.url has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let implicit_tls = url.scheme() == "smtps";
        let port = url.port().unwrap_or(if implicit_tls { 465 } else { 587 });
        let tls_parameters = TlsParameters::new(host.clone())?;
        let tls = match (implicit_tls, smtp.starttls) {
            (true, _) => Tls::Wrapper(tls_parameters),
            (false, StartTls::Required) => Tls::Required(tls_parameters),
            (false, StartTls::Opportunistic) => Tls::Opportunistic(tls_parameters),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .tls(tls)
            .timeout(Some(smtp.timeout))
            .pool_config(PoolConfig::new().max_size(smtp.pool_size));
        let decode = |s: &str| {
            percent_decode(s).ok_or_else(|| anyhow::anyhow!("smtp.url has a bad %-escape"))
        };
        if !url.username().is_empty() {
            builder = builder.credentials(Credentials::new(
                decode(url.username())?,
                decode(url.password().unwrap_or(""))?,
            ));
        } else if !smtp.username.is_empty() {
            builder = builder.credentials(Credentials::new(
                smtp.username.clone(),
                smtp.password.expose().to_owned(),
            ));
        }
        let from: Mailbox = smtp
            .from
            .parse()
            .map_err(|e| anyhow::anyhow!("smtp.from `{}`: {e}", smtp.from))?;
        let domain = from.email.domain().to_owned();
        Ok(Some(Self {
            transport: builder.build(),
            from,
            domain,
        }))
    }

    /// Sends `document` as the request asks. `subject` is already rendered.
    pub async fn send(
        &self,
        dispatch_id: Uuid,
        request: &EmailRequest,
        subject: &str,
        format: TemplateFormat,
        document: &[u8],
        content_type: &str,
    ) -> Sent {
        let message = match self.message(
            dispatch_id,
            request,
            subject,
            format,
            document,
            content_type,
        ) {
            Ok(m) => m,
            // Addresses were checked at submission; a message that cannot be built never will be.
            Err(e) => return Sent::Rejected(DispatchError::new(ErrorCode::ProviderError, e)),
        };
        match self.transport.send(message).await {
            Ok(reply) => Sent::Accepted {
                reply: format!(
                    "{} {}",
                    reply.code(),
                    reply.message().collect::<Vec<_>>().join(" ")
                )
                .trim_end()
                .to_owned(),
            },
            Err(e) if e.is_permanent() => Sent::Rejected(DispatchError::new(
                ErrorCode::ProviderRejected,
                format!("the mail server refused the message: {e}"),
            )),
            Err(e) => Sent::Transient(DispatchError::new(
                ErrorCode::ProviderError,
                format!(
                    "the mail server could not take the message yet: {}",
                    dispatcher_outbound::error_chain(&e)
                ),
            )),
        }
    }

    fn message(
        &self,
        dispatch_id: Uuid,
        request: &EmailRequest,
        subject: &str,
        format: TemplateFormat,
        document: &[u8],
        content_type: &str,
    ) -> Result<Message, String> {
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            // The same id on every try lets receiving systems drop a duplicate delivery.
            .message_id(Some(format!("<{dispatch_id}@{}>", self.domain)));
        b = add(b, &request.to, MessageBuilder::to)?;
        b = add(b, &request.cc, MessageBuilder::cc)?;
        b = add(b, &request.bcc, MessageBuilder::bcc)?;
        if let Some(r) = &request.reply_to {
            b = b.reply_to(parse(r)?);
        }
        let text = || String::from_utf8_lossy(document).into_owned();
        let built = match email::placement(format) {
            Placement::Html => b.multipart(MultiPart::alternative_plain_html(
                email::html_to_text(&text()),
                text(),
            )),
            Placement::Markdown => {
                let markdown = text();
                let mut html = String::with_capacity(markdown.len() * 2);
                pulldown_cmark::html::push_html(&mut html, pulldown_cmark::Parser::new(&markdown));
                b.multipart(MultiPart::alternative_plain_html(markdown, html))
            }
            Placement::Text => b.singlepart(SinglePart::plain(text())),
            Placement::Attachment { file_extension } => {
                let name =
                    email::attachment_name(request.attachment_name.as_deref(), file_extension);
                let kind = ContentType::parse(content_type)
                    .map_err(|e| format!("content type `{content_type}`: {e}"))?;
                b.multipart(
                    MultiPart::mixed()
                        .singlepart(SinglePart::plain(format!(
                            "{subject}\n\nThe document is attached: {name}\n"
                        )))
                        .singlepart(Attachment::new(name).body(document.to_vec(), kind)),
                )
            }
        };
        built.map_err(|e| format!("the message could not be built: {e}"))
    }
}

fn parse(address: &str) -> Result<Mailbox, String> {
    address
        .parse()
        .map_err(|e| format!("address `{address}`: {e}"))
}

fn add(
    mut b: MessageBuilder,
    addresses: &[String],
    field: fn(MessageBuilder, Mailbox) -> MessageBuilder,
) -> Result<MessageBuilder, String> {
    for a in addresses {
        b = field(b, parse(a)?);
    }
    Ok(b)
}

/// `%XX` escapes of a URL's user and password, decoded.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> SmtpSettings {
        SmtpSettings {
            url: dispatcher_config::Secret::new(url),
            from: "Billing <billing@example.com>".into(),
            username: String::new(),
            password: dispatcher_config::Secret::new(""),
            starttls: StartTls::Opportunistic,
            timeout: std::time::Duration::from_secs(5),
            pool_size: 2,
            retry_schedule: vec![],
        }
    }

    fn request() -> EmailRequest {
        serde_json::from_value(serde_json::json!({
            "to": ["Ada <ada@example.com>"], "cc": ["cc@example.com"],
            "subject": "unused", "replyTo": "help@example.com"
        }))
        .unwrap()
    }

    fn formatted(m: &Message) -> String {
        String::from_utf8(m.formatted()).unwrap()
    }

    // A pooled transport starts its pool's task: these run inside a runtime.
    #[tokio::test]
    async fn no_url_no_mailer() {
        assert!(Mailer::from_settings(&settings("")).unwrap().is_none());
        let m = Mailer::from_settings(&settings("smtp://u%40x:p%2Fw@127.0.0.1:2525"))
            .unwrap()
            .unwrap();
        assert_eq!(m.domain, "example.com");
        assert_eq!(percent_decode("u%40x").as_deref(), Some("u@x"));
        assert_eq!(percent_decode("bad%4"), None);
    }

    #[tokio::test]
    async fn html_goes_as_an_alternative_with_text() {
        let m = Mailer::from_settings(&settings("smtp://127.0.0.1:2525"))
            .unwrap()
            .unwrap();
        let id = Uuid::now_v7();
        let msg = m
            .message(
                id,
                &request(),
                "Invoice 7",
                TemplateFormat::Html,
                b"<h1>Hello &amp; welcome</h1>",
                "text/html; charset=utf-8",
            )
            .unwrap();
        let raw = formatted(&msg);
        assert!(raw.contains("multipart/alternative"), "{raw}");
        assert!(raw.contains("Hello & welcome"), "{raw}");
        assert!(raw.contains("Subject: Invoice 7"), "{raw}");
        assert!(
            raw.contains(&format!("Message-ID: <{id}@example.com>")),
            "{raw}"
        );
        assert!(raw.contains("Reply-To: help@example.com"), "{raw}");
        let to: Vec<String> = msg.envelope().to().iter().map(|a| a.to_string()).collect();
        assert_eq!(to, ["ada@example.com", "cc@example.com"]);
    }

    #[tokio::test]
    async fn documents_that_are_files_are_attached() {
        let m = Mailer::from_settings(&settings("smtp://127.0.0.1:2525"))
            .unwrap()
            .unwrap();
        let mut r = request();
        r.attachment_name = Some("report.csv".into());
        let raw = formatted(
            &m.message(
                Uuid::now_v7(),
                &r,
                "Report",
                TemplateFormat::Csv,
                b"a,b\n1,2\n",
                "text/csv; charset=utf-8",
            )
            .unwrap(),
        );
        assert!(raw.contains("multipart/mixed"), "{raw}");
        assert!(raw.contains("filename=\"report.csv\""), "{raw}");
        assert!(
            raw.contains("The document is attached: report.csv"),
            "{raw}"
        );
    }

    #[tokio::test]
    async fn markdown_becomes_html_with_its_source_as_text() {
        let m = Mailer::from_settings(&settings("smtp://127.0.0.1:2525"))
            .unwrap()
            .unwrap();
        let raw = formatted(
            &m.message(
                Uuid::now_v7(),
                &request(),
                "Notes",
                TemplateFormat::Markdown,
                b"# Title\n\n*bold*",
                "text/markdown; charset=utf-8",
            )
            .unwrap(),
        );
        assert!(raw.contains("<h1>Title</h1>"), "{raw}");
        assert!(raw.contains("# Title"), "{raw}");
    }
}
